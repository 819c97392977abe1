"""DRDC stage 2 as a LightningModule: the diffusion refinement, trained and tested alone (configs/drdc/refinement/)."""

from collections.abc import Sequence
from typing import Literal

from lightning.pytorch import Callback
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from anomaly_diff.data.batch import Batch, Prediction
from anomaly_diff.errors import ConfigError
from anomaly_diff.models.base import AnomalyModule, default_optimizer
from anomaly_diff.models.components.anomaly_map import image_score
from anomaly_diff.models.drdc.fusion import TemporalFusion, aggregate_refinement
from anomaly_diff.models.drdc.torch_model import DiffusionRefiner, InpaintingConfig
from anomaly_diff.utils.checks import check_ema_decay
from anomaly_diff.utils.settings import as_settings


class DRDCRefinement(AnomalyModule):
    """Stage 2 of DRDC: a class-conditioned pixel DDPM, used at test time to inpaint disjoint mask sets.

    Training (normal images only, full images, no masks): the DDPM epsilon objective (Ho et al., 2020, Eq. 14)
    at timesteps drawn uniformly from ``[0, max_train_timestep]``; each label is replaced by the null class with
    probability ``label_dropout`` so that the same network also predicts unconditionally (classifier-free
    guidance). Tested alone, the map is the aggregated correction heatmap of ``inpainting``.

    Args:
        categories: Category names (filled from the data by the CLI).
        block_out_channels: UNet channels per resolution.
        layers_per_block: ResNet blocks per resolution.
        attention: Self-attention at the lowest resolution.
        norm_num_groups: Group-norm groups.
        num_train_timesteps: Diffusion timesteps T. Defaults to 1000.
        beta_schedule: diffusers beta schedule. Defaults to ``"linear"``.
        max_train_timestep: Largest training timestep; ``None`` trains on all of ``[0, T)``. The test-time sweep
            never goes above ``t_{n_t}``, so a bound a little above it spends the training on the steps used.
        label_dropout: Probability of training a sample with the null class. Defaults to 0.1.
        inpainting: Test-time settings of the refinement-alone test (:class:`InpaintingConfig`).
        temporal: Temporal fusion of the heatmaps, ``"mean"`` or ``"last"``.
        top_k: Pixels averaged into the image score. Defaults to 1.
        ema_decay: If set, an exponential moving average of the weights is kept (Lightning's
            ``EMAWeightAveraging``) and used by validation, checkpoints and tests.
        category_source: Test-time conditioning: ``"given"`` or ``"predicted"``
            (:class:`~anomaly_diff.models.base.AnomalyModule`). Training always uses the given categories.
        optimizer: Optimiser factory. Defaults to AdamW(lr=1e-4, weight_decay=1e-4).
        scheduler: Optional learning-rate scheduler factory.
    """

    def __init__(
        self,
        categories: Sequence[str] | None = None,
        block_out_channels: Sequence[int] = (64, 128, 256, 256),
        layers_per_block: int = 2,
        attention: bool = True,
        norm_num_groups: int = 32,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "linear",
        max_train_timestep: int | None = None,
        label_dropout: float = 0.1,
        inpainting: InpaintingConfig | None = None,
        temporal: TemporalFusion = "mean",
        top_k: int = 1,
        ema_decay: float | None = None,
        category_source: Literal["given", "predicted"] = "given",
        optimizer: OptimizerCallable = default_optimizer,
        scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(categories, optimizer, scheduler, category_source)
        if max_train_timestep is not None and not 0 <= max_train_timestep < num_train_timesteps:
            raise ConfigError(
                f"model.max_train_timestep={max_train_timestep} must lie in [0, num_train_timesteps="
                f"{num_train_timesteps}) or be null"
            )
        if not 0 <= label_dropout < 1:
            raise ConfigError(f"model.label_dropout must lie in [0, 1), got {label_dropout}")
        check_ema_decay(ema_decay)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.model = DiffusionRefiner(
            self.num_classes,
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            attention=attention,
            norm_num_groups=norm_num_groups,
            num_train_timesteps=num_train_timesteps,
            beta_schedule=beta_schedule,
            inpainting=as_settings(InpaintingConfig, inpainting),
        )
        self.max_train_timestep = num_train_timesteps - 1 if max_train_timestep is None else max_train_timestep
        self.label_dropout = label_dropout
        self.temporal = temporal
        self.top_k = top_k
        self.ema_decay = ema_decay

    def configure_callbacks(self) -> list[Callback]:
        """Add the EMA callback when ``ema_decay`` is set."""
        return [EMAWeightAveraging(decay=self.ema_decay)] if self.ema_decay is not None else []

    def compute_losses(self, batch: Batch) -> dict[str, Tensor]:
        """DDPM epsilon MSE with classifier-free label dropout."""
        labels = self.class_indices(batch["category"])
        return {"loss": self.model.training_loss(batch["image"], labels, self.max_train_timestep, self.label_dropout)}

    def predict_anomaly(self, batch: Batch) -> Prediction:
        """The aggregated correction heatmap (refinement alone) and its top-k mean as image score."""
        heatmaps = self.model.refine(batch["image"], self.class_indices(self.batch_categories(batch))).heatmaps
        anomaly_map = aggregate_refinement(heatmaps, self.temporal)
        return {"anomaly_map": anomaly_map, "pred_score": image_score(anomaly_map, self.top_k)}
