"""DRDC as LightningModules: the two stages, trained apart, and the combined model that fuses them.

- :class:`DRDCBase` trains the transformer feature reconstructor (``configs/drdc/base/<dataset>.yaml``); tested
  alone, its map is the base heatmap.
- :class:`DRDCRefinement` trains the class-conditioned pixel diffusion model
  (``configs/drdc/refinement/<dataset>.yaml``); tested alone, its map is the fused correction heatmap.
- :class:`DRDC` loads both stage checkpoints and evaluates base + refinement + spatio-temporal fusion
  (``configs/drdc/<dataset>.yaml``); its test-time hyper-parameters (``n_t``, ``t_{n_t}``, ``n_s``, ``m``,
  ``gamma``, ...) override the refinement checkpoint's.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from anomaly_diff.data.batch import Batch, Prediction
from anomaly_diff.diffusion.inpainting import InpaintInit, MaskLayout
from anomaly_diff.models.base import AnomalyModule, default_optimizer
from anomaly_diff.models.components.anomaly_map import gaussian_blur, image_score
from anomaly_diff.models.components.backbone import DEFAULT_WEIGHTS, FeatureExtractor
from anomaly_diff.models.components.sample_cache import SampleCache
from anomaly_diff.models.drdc.base_model import BaseReconstructor
from anomaly_diff.models.drdc.fusion import FusionMode, TemporalFusion, aggregate_refinement, fuse
from anomaly_diff.models.drdc.torch_model import DiffusionRefiner, HeatmapMode


class DRDCBase(AnomalyModule):
    """Stage 1 of DRDC: a neighbourhood-masked transformer reconstructs frozen CNN features (UniAD line).

    Loss: MSE between reconstructed and frozen features (UniAD). Map: L2 norm of the feature error, upsampled to
    the image and Gaussian-blurred; score: mean of the ``top_k`` largest map values.

    Args:
        categories: Category names (filled from the data by the CLI); the model itself is class-agnostic.
        backbone: timm model name. Defaults to ``"tf_efficientnet_lite0"``.
        layers: Backbone stages (``feature_info`` indices). Defaults to ``(0, 1, 2, 3)`` (strides 2..16).
        output_stride: Stride of the token grid. Defaults to 16.
        weights: Pretrained weights (:mod:`anomaly_diff.models.components.backbone`). Defaults to the offline
            EfficientNet-Lite0 package.
        input_size: Side the image is resized to for the backbone. Defaults to 224.
        hidden_dim: Transformer width. Defaults to 256.
        num_heads: Attention heads. Defaults to 8.
        num_encoder_layers: Encoder layers. Defaults to 4.
        num_decoder_layers: Decoder layers. Defaults to 4.
        feedforward_dim: Feed-forward width. Defaults to 1024.
        dropout: Transformer dropout. Defaults to 0.1.
        neighbourhood: Odd side of the attention mask in tokens, 0 = none. Defaults to 7.
        jitter_scale: Feature-jitter scale, 0 = none. Defaults to 20.
        jitter_prob: Feature-jitter probability. Defaults to 1.
        blur_sigma: Gaussian blur of the map in pixels of the image. Defaults to 4.
        top_k: Pixels averaged into the image score (1 = maximum). Defaults to 1.
        cache_features: Extract each training/validation image's frozen features once and reuse them (keyed by
            the image path) in later epochs. Only valid with a deterministic training transform, as in this
            project's datamodules. Defaults to False.
        optimizer: Optimiser factory. Defaults to AdamW(lr=1e-4, weight_decay=1e-4).
        scheduler: Optional learning-rate scheduler factory.
    """

    def __init__(
        self,
        categories: Sequence[str] | None = None,
        backbone: str = "tf_efficientnet_lite0",
        layers: Sequence[int] = (0, 1, 2, 3),
        output_stride: int = 16,
        weights: str = DEFAULT_WEIGHTS,
        input_size: int = 224,
        hidden_dim: int = 256,
        num_heads: int = 8,
        num_encoder_layers: int = 4,
        num_decoder_layers: int = 4,
        feedforward_dim: int = 1024,
        dropout: float = 0.1,
        neighbourhood: int = 7,
        jitter_scale: float = 20.0,
        jitter_prob: float = 1.0,
        blur_sigma: float = 4.0,
        top_k: int = 1,
        cache_features: bool = False,
        optimizer: OptimizerCallable = default_optimizer,
        scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(categories, optimizer, scheduler)
        if blur_sigma < 0 or top_k < 1:
            raise ValueError(f"model.blur_sigma must be >= 0 ({blur_sigma}) and model.top_k >= 1 ({top_k})")
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        extractor = FeatureExtractor(backbone, layers, output_stride, weights)
        self.model = BaseReconstructor(
            extractor,
            input_size=input_size,
            hidden_dim=hidden_dim,
            num_heads=num_heads,
            num_encoder_layers=num_encoder_layers,
            num_decoder_layers=num_decoder_layers,
            feedforward_dim=feedforward_dim,
            dropout=dropout,
            neighbourhood=neighbourhood,
            jitter_scale=jitter_scale,
            jitter_prob=jitter_prob,
        )
        self.blur_sigma = blur_sigma
        self.top_k = top_k
        self.feature_cache = SampleCache() if cache_features else None

    def compute_losses(self, batch: Batch) -> dict[str, Tensor]:
        """MSE between the reconstructed and the frozen features (jittered input while training)."""
        if self.feature_cache is None:
            features = self.model.extract(batch["image"])
        else:
            features = self.feature_cache(batch["path"], batch["image"], self.model.extract)
        return {"loss": F.mse_loss(self.model.reconstruct(features), features)}

    def base_heatmap(self, image: Tensor) -> Tensor:
        """The blurred, upsampled feature-reconstruction error of ``(B, 3, H, W)`` images: ``(B, H, W)``."""
        reconstruction, features = self.model(image)
        return gaussian_blur(BaseReconstructor.error_map(reconstruction, features, image.shape[-2:]), self.blur_sigma)

    def predict_anomaly(self, batch: Batch) -> Prediction:
        """The base heatmap and its top-k mean as image score."""
        anomaly_map = self.base_heatmap(batch["image"])
        return {"anomaly_map": anomaly_map, "pred_score": image_score(anomaly_map, self.top_k)}


class DRDCRefinement(AnomalyModule):
    """Stage 2 of DRDC: a class-conditioned pixel DDPM, used at test time to inpaint disjoint mask sets.

    Training (normal images only, full images, no masks): the DDPM epsilon objective (Ho et al., 2020, Eq. 14)
    at timesteps drawn uniformly from ``[0, max_train_timestep]``; each label is replaced by the null class with
    probability ``label_dropout`` so that the same network also predicts unconditionally (classifier-free
    guidance). The inpainting and heatmap arguments are those of
    :class:`~anomaly_diff.models.drdc.torch_model.DiffusionRefiner`; tested alone, the map is the aggregated
    correction heatmap.

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
        num_timesteps: ``n_t``.
        start_timestep: ``t_{n_t}``.
        num_sets: ``n_s``.
        patch_sizes: Mask square side per inpainting configuration, in pixels.
        mask_layout: ``"interleaved"`` or ``"random"``.
        init: ``"noised_input"`` or ``"noise"``.
        guidance_scale: Classifier-free guidance weight ``w``.
        filter_size: ``m``.
        scales: Heatmap scales.
        heatmap_mode: ``"highpass"`` or ``"residual"``.
        temporal: Temporal fusion of the heatmaps, ``"mean"`` or ``"last"``.
        top_k: Pixels averaged into the image score. Defaults to 1.
        ema_decay: If set, an exponential moving average of the weights is kept (Lightning's
            ``EMAWeightAveraging``) and used by validation, checkpoints and tests.
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
        num_timesteps: int = 5,
        start_timestep: int = 100,
        num_sets: int = 4,
        patch_sizes: Sequence[int] = (8,),
        mask_layout: MaskLayout = "interleaved",
        init: InpaintInit = "noised_input",
        guidance_scale: float = 2.0,
        filter_size: int = 9,
        scales: Sequence[int] = (1, 2),
        heatmap_mode: HeatmapMode = "residual",
        temporal: TemporalFusion = "mean",
        top_k: int = 1,
        ema_decay: float | None = None,
        optimizer: OptimizerCallable = default_optimizer,
        scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(categories, optimizer, scheduler)
        if max_train_timestep is not None and not 0 <= max_train_timestep < num_train_timesteps:
            raise ValueError(
                f"model.max_train_timestep={max_train_timestep} must lie in [0, num_train_timesteps="
                f"{num_train_timesteps}) or be null"
            )
        if not 0 <= label_dropout < 1:
            raise ValueError(f"model.label_dropout must lie in [0, 1), got {label_dropout}")
        if ema_decay is not None and not 0 < ema_decay < 1:
            raise ValueError(f"model.ema_decay must lie in (0, 1) or be null, got {ema_decay}")
        if top_k < 1:
            raise ValueError(f"model.top_k must be >= 1, got {top_k}")
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.model = DiffusionRefiner(
            self.num_classes,
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            attention=attention,
            norm_num_groups=norm_num_groups,
            num_train_timesteps=num_train_timesteps,
            beta_schedule=beta_schedule,
            num_timesteps=num_timesteps,
            start_timestep=start_timestep,
            num_sets=num_sets,
            patch_sizes=patch_sizes,
            mask_layout=mask_layout,
            init=init,
            guidance_scale=guidance_scale,
            filter_size=filter_size,
            scales=scales,
            heatmap_mode=heatmap_mode,
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
        x0 = batch["image"] * 2 - 1
        timesteps = torch.randint(0, self.max_train_timestep + 1, (x0.shape[0],), device=x0.device)
        noise = torch.randn_like(x0)
        schedule = self.model.schedule
        noisy = schedule.signal_rate(timesteps) * x0 + schedule.noise_rate(timesteps) * noise
        labels = self.class_indices(batch["category"])
        dropped = torch.rand(labels.shape, device=labels.device) < self.label_dropout
        labels = torch.where(dropped, torch.full_like(labels, self.model.null_class), labels)
        return {"loss": F.mse_loss(self.model(noisy, timesteps, labels), noise)}

    def refinement_heatmaps(self, image: Tensor, categories: Sequence[str]) -> Tensor:
        """Correction heatmaps ``(B, K, n_t, S, H, W)`` of ``(B, 3, H, W)`` images of the named categories."""
        return self.model.forward_refinement(image, self.class_indices(categories)).heatmaps

    def predict_anomaly(self, batch: Batch) -> Prediction:
        """The aggregated correction heatmap (refinement alone) and its top-k mean as image score."""
        anomaly_map = aggregate_refinement(self.refinement_heatmaps(batch["image"], batch["category"]), self.temporal)
        return {"anomaly_map": anomaly_map, "pred_score": image_score(anomaly_map, self.top_k)}


class DRDCOutput(NamedTuple):
    """Every heatmap component of one DRDC pass.

    Attributes:
        anomaly_map: ``(B, H, W)`` the fused map.
        pred_score: ``(B,)`` its top-k mean.
        base_map: ``(B, H, W)`` the base heatmap.
        refinement_map: ``(B, H, W)`` the aggregated correction heatmap.
        correction_maps: ``(B, K, n_t, S, H, W)`` the correction heatmaps per inpainting configuration,
            timestep and scale.
    """

    anomaly_map: Tensor
    pred_score: Tensor
    base_map: Tensor
    refinement_map: Tensor
    correction_maps: Tensor


def _load_stage(kind: type[AnomalyModule], key: str, path: str, stage_config: str, **overrides) -> AnomalyModule:
    if not Path(path).expanduser().is_file():
        raise FileNotFoundError(
            f"model.{key}={path!r} does not exist: train the stage first (anomaly-diff fit --config "
            f"configs/drdc/{stage_config}/<dataset>.yaml) and point {key} at its checkpoint"
        )
    # Our own Lightning checkpoints: their hyper-parameters hold plain Python objects, not only tensors.
    return kind.load_from_checkpoint(Path(path).expanduser(), map_location="cpu", weights_only=False, **overrides)


class DRDC(AnomalyModule):
    """DRDC: base heatmap + diffusion refinement with dual conditioning + spatio-temporal fusion.

    Built from the two stage checkpoints. ``test`` evaluates the fused map through the shared evaluator;
    ``predict`` returns every component (:class:`DRDCOutput`). ``fit`` (``max_epochs > 0``) fine-tunes both
    stages jointly on the sum of their losses; the configs use ``max_epochs: 0``, so ``fit`` only tests.

    Args:
        categories: The categories of the data (filled by the CLI); must be among the checkpoints' categories,
            whose class indices the model keeps. ``None`` uses the checkpoints' categories.
        base_checkpoint: Checkpoint of a :class:`DRDCBase` run.
        refinement_checkpoint: Checkpoint of a :class:`DRDCRefinement` run with the same categories.
        num_timesteps: ``n_t``, timesteps of the inpainting sweep.
        start_timestep: ``t_{n_t}``, its first timestep.
        num_sets: ``n_s``, disjoint mask sets per configuration.
        patch_sizes: Mask square side of each inpainting configuration, in pixels.
        mask_layout: ``"interleaved"`` or ``"random"``.
        init: ``"noised_input"`` or ``"noise"``.
        guidance_scale: Classifier-free guidance weight toward the image's category (test-time conditioning).
        filter_size: ``m``, the mean filter of the correction heatmaps.
        scales: Heatmap scales.
        heatmap_mode: ``"highpass"`` or ``"residual"``.
        temporal: ``"mean"`` over timesteps or ``"last"``.
        gamma: Weight of the refinement in the fusion.
        fusion: ``"multiplicative"`` or ``"additive"`` (:func:`~anomaly_diff.models.drdc.fusion.fuse`).
        top_k: Pixels of the fused map averaged into the image score (1 = maximum).
        optimizer: Optimiser factory of the joint fine-tuning.
        scheduler: Optional learning-rate scheduler factory.
    """

    def __init__(
        self,
        categories: Sequence[str] | None = None,
        base_checkpoint: str = "",
        refinement_checkpoint: str = "",
        num_timesteps: int = 5,
        start_timestep: int = 100,
        num_sets: int = 4,
        patch_sizes: Sequence[int] = (8,),
        mask_layout: MaskLayout = "interleaved",
        init: InpaintInit = "noised_input",
        guidance_scale: float = 2.0,
        filter_size: int = 9,
        scales: Sequence[int] = (1, 2),
        heatmap_mode: HeatmapMode = "residual",
        temporal: TemporalFusion = "mean",
        gamma: float = 16.0,
        fusion: FusionMode = "multiplicative",
        top_k: int = 1,
        optimizer: OptimizerCallable = default_optimizer,
        scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        # Arguments first (cheap), then the checkpoints (slow to load).
        if gamma < 0 or top_k < 1:
            raise ValueError(f"model.gamma must be >= 0 ({gamma}) and model.top_k >= 1 ({top_k})")
        if num_sets < 1:
            raise ValueError(f"model.num_sets (n_s) must be >= 1, got {num_sets}")
        base = _load_stage(DRDCBase, "base_checkpoint", base_checkpoint, "base")
        refinement = _load_stage(
            DRDCRefinement,
            "refinement_checkpoint",
            refinement_checkpoint,
            "refinement",
            num_timesteps=num_timesteps,
            start_timestep=start_timestep,
            num_sets=num_sets,
            patch_sizes=patch_sizes,
            mask_layout=mask_layout,
            init=init,
            guidance_scale=guidance_scale,
            filter_size=filter_size,
            scales=scales,
            heatmap_mode=heatmap_mode,
        )
        if base.categories != refinement.categories:
            raise ValueError(
                f"model.base_checkpoint categories {base.categories} differ from model.refinement_checkpoint's "
                f"{refinement.categories}; train both stages on the same data"
            )
        unknown = sorted(set(categories or []) - set(refinement.categories))
        if unknown:
            raise ValueError(
                f"model.categories {unknown} are not among the checkpoints' categories {refinement.categories}"
            )
        super().__init__(refinement.categories, optimizer, scheduler)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.base = base
        self.refinement = refinement
        self.temporal = temporal
        self.gamma = gamma
        self.fusion = fusion
        self.top_k = top_k

    def compute_losses(self, batch: Batch) -> dict[str, Tensor]:
        """Joint fine-tuning: the base and refinement objectives, summed (they share no parameters)."""
        base = self.base.compute_losses(batch)["loss"]
        refinement = self.refinement.compute_losses(batch)["loss"]
        return {"loss": base + refinement, "base_loss": base, "refinement_loss": refinement}

    def detect(self, batch: Batch) -> DRDCOutput:
        """Run both branches on a batch and fuse them."""
        base_map = self.base.base_heatmap(batch["image"])
        correction_maps = self.refinement.refinement_heatmaps(batch["image"], batch["category"])
        refinement_map = aggregate_refinement(correction_maps, self.temporal)
        anomaly_map = fuse(base_map, refinement_map, self.gamma, self.fusion)
        return DRDCOutput(anomaly_map, image_score(anomaly_map, self.top_k), base_map, refinement_map, correction_maps)

    def predict_anomaly(self, batch: Batch) -> Prediction:
        """The fused map and its image score."""
        output = self.detect(batch)
        return {"anomaly_map": output.anomaly_map, "pred_score": output.pred_score}

    def predict_step(self, batch: Batch, batch_idx: int) -> dict:
        """Every heatmap component (:class:`DRDCOutput`) with each sample's path and category."""
        return {**self.detect(batch)._asdict(), "path": batch["path"], "category": batch["category"]}
