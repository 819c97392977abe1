"""DRDC stage 1 as a LightningModule: the base model, trained and tested alone (configs/drdc/base/<dataset>.yaml)."""

from collections.abc import Sequence
from typing import Literal

import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from anomaly_diff.data.batch import Batch, Prediction
from anomaly_diff.models.base import AnomalyModule, default_optimizer
from anomaly_diff.models.components.anomaly_map import image_score
from anomaly_diff.models.components.backbone import DEFAULT_WEIGHTS, FeatureExtractor
from anomaly_diff.models.components.sample_cache import SampleCache
from anomaly_diff.models.drdc.base_model import BaseReconstructor


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
        category_source: Test-time conditioning: ``"given"`` or ``"predicted"``
            (:class:`~anomaly_diff.models.base.AnomalyModule`). Training always uses the given categories.
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
        category_source: Literal["given", "predicted"] = "given",
        optimizer: OptimizerCallable = default_optimizer,
        scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(categories, optimizer, scheduler, category_source)
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
            blur_sigma=blur_sigma,
        )
        self.top_k = top_k
        self.feature_cache = SampleCache() if cache_features else None

    def compute_losses(self, batch: Batch) -> dict[str, Tensor]:
        """MSE between the reconstructed and the frozen features (jittered input while training)."""
        if self.feature_cache is None:
            features = self.model.extract(batch["image"])
        else:
            features = self.feature_cache(batch["path"], batch["image"], self.model.extract)
        return {"loss": F.mse_loss(self.model.reconstruct(features), features)}

    def predict_anomaly(self, batch: Batch) -> Prediction:
        """The base heatmap and its top-k mean as image score."""
        anomaly_map = self.model.anomaly_map(batch["image"])
        return {"anomaly_map": anomaly_map, "pred_score": image_score(anomaly_map, self.top_k)}
