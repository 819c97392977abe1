"""DeCo-Diff as a LightningModule: the paper's training objective, and maps/scores for the shared evaluator."""

from collections.abc import Sequence
from typing import Literal

import torch.nn.functional as F
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from anomaly_diff.data.batch import Batch, Prediction
from anomaly_diff.diffusion.deviation import corrupt, deviation_target
from anomaly_diff.diffusion.masks import sample_patch_corruption
from anomaly_diff.diffusion.schedule import resolve_chain
from anomaly_diff.errors import ConfigError
from anomaly_diff.models.base import AnomalyModule, default_optimizer
from anomaly_diff.models.components.autoencoder import (
    LatentCodec,
    autoencoder_architecture,
    autoencoder_from_architecture,
)
from anomaly_diff.models.components.sample_cache import SampleCache
from anomaly_diff.models.deco_diff.reference_checkpoint import load_reference_checkpoint
from anomaly_diff.models.deco_diff.torch_model import AnomalyMapConfig, DeCoDiffModel, DeCoDiffOutput, UNetPreset
from anomaly_diff.utils.checks import check_ema_decay
from anomaly_diff.utils.provenance import loaded_file


class DeCoDiff(AnomalyModule):
    """DeCo-Diff (Beizaee et al., CVPR 2025): one latent deviation-correction model for all categories.

    Training and testing as implemented: ``anomaly_diff/models/deco_diff/README.md``, section "Method".

    Args:
        categories: Category names (filled from the data by the CLI).
        autoencoder: The frozen KL autoencoder: a hub id (``"stabilityai/sd-vae-ft-ema"``, the reference's) or a
            local ``save_pretrained`` folder, e.g. the one ``configs/autoencoder/<dataset>.yaml`` exports. Read
            only when ``autoencoder_config`` is not given.
        unet: UNet preset (``"tiny"``, ``"XS"``, ``"S"``, ``"M"``, ``"L"``, ``"XL"``) or a :class:`UNetPreset`.
            Defaults to ``"L"`` (the released weights).
        num_train_timesteps: Diffusion timesteps T. Defaults to ``10``.
        beta_schedule: diffusers beta schedule. Defaults to ``"squaredcos_cap_v2"``.
        reverse_steps: The test-time chain as the reference sets it (``--reverse-steps``): that many timesteps
            of ``T`` by its respacing rule, 5 -> ``[8, 6, 4, 2, 0]``, 4 -> ``[9, 6, 3, 0]``, 3 -> ``[8, 4, 0]``
            (:func:`~anomaly_diff.diffusion.schedule.respaced_timesteps`). Defaults to ``5`` (the reference's).
        timesteps: The chain given explicitly instead (strictly decreasing, e.g. ``[4, 3, 2, 1, 0]``); set
            ``reverse_steps`` to null when using it.
        patch_sizes: Patch sides of the corruption mask, in latent cells. Defaults to ``(1, 2, 4, 8, 16)``.
        patch_size_probs: Their probabilities. Defaults to ``(0.3, 0.25, 0.2, 0.15, 0.1)``.
        max_mask_ratio: Upper bound of the corrupted fraction. Defaults to ``0.7``.
        max_shuffle_ratio: Upper bound of the shuffled-latent fraction of the noise. Defaults to ``0.3``.
        anomaly_map: Map and score settings. Defaults to the reference's at 256 x 256.
        cache_latents: Encode each training/validation image once and reuse its latent (keyed by the image
            path) in later epochs. Only valid when the training transform is deterministic (no random
            augmentation), as in this project's datamodules; on CPU it removes most of the cost of an epoch.
        reference_checkpoint: UNet weights in the DeCo-Diff reference's format, loaded after the model is built: the
            authors' released checkpoint or any of its training script's outputs (``{"model": state_dict}``) to test
            or fine-tune, or an LDM checkpoint (``{"state_dict": ...}``, e.g. the class-conditional cin256-v2) to
            initialise training from, as the authors did (:mod:`~anomaly_diff.models.deco_diff.reference_checkpoint`).
            The ``unet`` preset must be the file's size.
        reference_classes: The category of each class-embedding row of a DeCo-Diff reference checkpoint, in row
            order; ``None`` takes the reference's own order for MVTec AD or VisA.
        ema_decay: If set, an exponential moving average of the weights (Lightning's ``EMAWeightAveraging``,
            updated every optimiser step) is kept; validation, checkpoints and the test after ``fit`` use it.
        category_source: Test-time conditioning: ``"given"`` (each image's category from the data, predicted where
            the data has none, e.g. a flat folder to predict) or ``"predicted"`` (always the category classifier's
            prediction; see :class:`~anomaly_diff.models.base.AnomalyModule`). Training always uses the given ones.
        autoencoder_config: The autoencoder's architecture: filled from ``autoencoder`` when the model is first
            built and saved in its checkpoint, whose state dict holds the weights, so a checkpoint loads without the
            autoencoder folder or the hub; not set by hand.
        optimizer: Optimiser factory. Defaults to AdamW(lr=1e-4, weight_decay=1e-4).
        scheduler: Optional learning-rate scheduler factory, e.g.
            :class:`~anomaly_diff.models.components.lr_schedulers.WarmupCosineLR`.
    """

    def __init__(
        self,
        categories: Sequence[str] | None = None,
        autoencoder: str = "stabilityai/sd-vae-ft-ema",
        unet: str | UNetPreset = "L",
        num_train_timesteps: int = 10,
        beta_schedule: str = "squaredcos_cap_v2",
        reverse_steps: int | None = 5,
        timesteps: Sequence[int] | None = None,
        patch_sizes: Sequence[int] = (1, 2, 4, 8, 16),
        patch_size_probs: Sequence[float] = (0.3, 0.25, 0.2, 0.15, 0.1),
        max_mask_ratio: float = 0.7,
        max_shuffle_ratio: float = 0.3,
        anomaly_map: AnomalyMapConfig | None = None,
        cache_latents: bool = False,
        reference_checkpoint: str | None = None,
        reference_classes: Sequence[str] | None = None,
        ema_decay: float | None = None,
        category_source: Literal["given", "predicted"] = "given",
        autoencoder_config: dict | None = None,
        optimizer: OptimizerCallable = default_optimizer,
        scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(categories, optimizer, scheduler, category_source)
        for name, value in (("max_mask_ratio", max_mask_ratio), ("max_shuffle_ratio", max_shuffle_ratio)):
            if not 0 <= value <= 1:
                raise ConfigError(f"model.{name} must lie in [0, 1], got {value}")
        check_ema_decay(ema_decay)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        if autoencoder_config is not None:  # from a DeCoDiff checkpoint: the architecture; weights from its state
            codec = LatentCodec(autoencoder_from_architecture(autoencoder_config))
        else:
            codec = LatentCodec(autoencoder)
            if isinstance(autoencoder, str):  # a folder or hub id (tests may pass a module)
                self.loaded_files["autoencoder"] = loaded_file("autoencoder", autoencoder, "DeCoDiff")
            self.hparams["autoencoder_config"] = autoencoder_architecture(codec.vae)
        self.model = DeCoDiffModel(
            codec,
            num_classes=self.num_classes,
            unet=unet,
            latent_channels=codec.latent_channels,
            num_train_timesteps=num_train_timesteps,
            beta_schedule=beta_schedule,
            timesteps=resolve_chain(num_train_timesteps, reverse_steps, timesteps),
            anomaly_map=anomaly_map,
        )
        if reference_checkpoint is not None:
            load_reference_checkpoint(reference_checkpoint, self.model, self.categories, reference_classes)
            self.loaded_files["reference_checkpoint"] = loaded_file("reference_checkpoint", reference_checkpoint,
                                                                    "DeCoDiff")
        self.patch_sizes = tuple(patch_sizes)
        self.patch_size_probs = tuple(patch_size_probs)
        self.max_mask_ratio = max_mask_ratio
        self.max_shuffle_ratio = max_shuffle_ratio
        self.ema_decay = ema_decay
        self.cache_latents = cache_latents
        self._latent_cache = SampleCache()

    def configure_callbacks(self) -> list[Callback]:
        """Add the EMA callback when ``ema_decay`` is set."""
        return [EMAWeightAveraging(decay=self.ema_decay)] if self.ema_decay is not None else []

    def compute_losses(self, batch: Batch) -> dict[str, Tensor]:
        """MSE between the predicted and the true deviation of randomly patch-corrupted latents."""
        latents = self.encode_cached(batch) if self.cache_latents else self.model.codec.encode(batch["image"])
        corruption = sample_patch_corruption(
            latents, self.patch_sizes, self.patch_size_probs, self.max_mask_ratio, self.max_shuffle_ratio
        )
        schedule = self.model.schedule
        timesteps = schedule.sample_timesteps(latents.shape[0])
        noisy = corrupt(latents, corruption.noise, corruption.keep, schedule, timesteps)
        target = deviation_target(latents, corruption.noise, corruption.keep, schedule, timesteps)
        prediction = self.model(noisy, timesteps, self.class_indices(batch["category"]))
        return {"loss": F.mse_loss(prediction.float(), target)}

    def encode_cached(self, batch: Batch) -> Tensor:
        """Latents ``(B, C, h, w)`` of a batch, encoding only the images not seen before (keyed by path)."""
        return self._latent_cache(batch["path"], batch["image"], self.model.codec.encode)

    def detect(self, batch: Batch) -> DeCoDiffOutput:
        """Run the test-time correction on a batch, conditioned on ``batch_categories`` (given or predicted)."""
        return self.model.detect(batch["image"], self.class_indices(self.batch_categories(batch)))

    def predict_anomaly(self, batch: Batch) -> Prediction:
        """Anomaly maps ``(B, H, W)`` and image scores ``(B,)``."""
        output = self.detect(batch)
        return {"anomaly_map": output.anomaly_map, "pred_score": output.pred_score}
