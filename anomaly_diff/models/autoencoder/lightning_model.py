"""Stage 1 of latent diffusion trained here: a small KL autoencoder, which is also a reconstruction baseline."""

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from anomaly_diff.data.batch import Batch, Prediction
from anomaly_diff.errors import ConfigError
from anomaly_diff.models.base import AnomalyModule, default_optimizer
from anomaly_diff.models.components.anomaly_map import gaussian_blur, image_score
from anomaly_diff.models.components.backbone import DEFAULT_WEIGHTS
from anomaly_diff.models.components.feature_autoencoder import FeatureAutoencoder
from anomaly_diff.utils.checks import check_norm_groups
from anomaly_diff.utils.io import atomic_write_dir
from anomaly_diff.utils.runs import run_directory


class Autoencoder(AnomalyModule):
    """The latent autoencoder of latent diffusion, trained on the normal training images.

    Trained where no hub autoencoder is reachable and exported with ``save_pretrained`` so that
    :class:`~anomaly_diff.models.components.autoencoder.LatentCodec` loads it like the pretrained one
    (``anomaly_diff/models/deco_diff/README.md``). ``"kl"``: a diffusers ``AutoencoderKL`` from scratch
    (reconstruction + KL), exported with ``scaling_factor`` = 1 / std of the training latents. ``"pretrained"``: a
    :class:`~anomaly_diff.models.components.feature_autoencoder.FeatureAutoencoder` (frozen EfficientNet-Lite0
    encoder; only the decoder trains, on L1). Tested alone it is the reconstruction baseline: map = blurred max over
    RGB of ``|x - reconstruction|``, score = its maximum.

    Args:
        categories: Category names (filled from the data by the CLI); the autoencoder itself is class-agnostic.
        encoder: ``"kl"`` (trained from scratch) or ``"pretrained"`` (frozen pretrained CNN), see above.
        block_out_channels: Channels per resolution; ``len - 1`` halvings (4 entries: 8x smaller latents).
        latent_channels: Channels of the latent. Defaults to 4 (as Stable Diffusion's). For ``"pretrained"``,
            the width of a learned 1 x 1 projection of the features, or ``None`` for the features themselves.
        backbone_layers: ``"pretrained"`` only: the EfficientNet-Lite0 stages that make the latent (1, 2: stride
            4 and 8, 64 channels), resized to the latent grid.
        backbone_weights: ``"pretrained"`` only: where its weights come from (``backbone`` module docstring).
        layers_per_block: ResNet blocks per resolution.
        norm_num_groups: Groups of the group norms; must divide every entry of ``block_out_channels``.
        kl_weight: Weight of the KL term. Defaults to 1e-6 (latent-diffusion autoencoders use a tiny one).
        export_dir: Where ``save_pretrained`` writes the trained autoencoder at the end of ``fit``;
            ``None`` (the configs' choice) writes ``<run dir>/autoencoder``, which later stages load through
            ``<save_dir>/<name>/latest/autoencoder``. The folder is written whole or not at all; one already there
            is kept as ``<export_dir>.replaced-<time>``.
        blur_sigma: Gaussian blur of the baseline anomaly map, in pixels.
        train_crop_size: Train on random square crops of this side (the network is fully convolutional, so it
            still encodes whole images); ``None`` trains on whole images. Crops cut the CPU cost of a step by
            ``(H / crop)^2``.
        optimizer: Optimiser factory. Defaults to AdamW(lr=1e-4, weight_decay=1e-4).
        scheduler: Optional learning-rate scheduler factory.
    """

    def __init__(
        self,
        categories: Sequence[str] | None = None,
        encoder: Literal["kl", "pretrained"] = "kl",
        block_out_channels: Sequence[int] = (32, 64, 64, 64),
        latent_channels: int | None = 4,
        backbone_layers: Sequence[int] = (1, 2),
        backbone_weights: str = DEFAULT_WEIGHTS,
        layers_per_block: int = 1,
        norm_num_groups: int = 16,
        kl_weight: float = 1e-6,
        export_dir: str | None = None,
        blur_sigma: float = 3.0,
        train_crop_size: int | None = None,
        optimizer: OptimizerCallable = default_optimizer,
        scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(categories, optimizer, scheduler)
        if kl_weight < 0:
            raise ConfigError(f"model.kl_weight must be >= 0, got {kl_weight}")
        if blur_sigma < 0:
            raise ConfigError(f"model.blur_sigma must be >= 0, got {blur_sigma}")
        check_norm_groups("model.norm_num_groups", norm_num_groups, block_out_channels, "block_out_channels")
        downsampling = 2 ** (len(block_out_channels) - 1)
        if train_crop_size is not None and (train_crop_size <= 0 or train_crop_size % downsampling):
            raise ConfigError(f"model.train_crop_size={train_crop_size} must be a positive multiple of {downsampling}")
        if encoder == "kl" and latent_channels is None:
            raise ConfigError("model.latent_channels must be set for encoder 'kl' (null is for 'pretrained' only)")
        self.save_hyperparameters()
        depth = len(block_out_channels)
        if encoder == "pretrained":
            self.vae = FeatureAutoencoder(
                backbone_layers=tuple(backbone_layers),
                downsampling=downsampling,
                latent_channels=latent_channels,
                block_out_channels=tuple(block_out_channels),
                layers_per_block=layers_per_block,
                norm_num_groups=norm_num_groups,
            )
            self.vae.load_backbone_weights(backbone_weights)
        else:
            self.vae = AutoencoderKL(
                in_channels=3,
                out_channels=3,
                down_block_types=("DownEncoderBlock2D",) * depth,
                up_block_types=("UpDecoderBlock2D",) * depth,
                block_out_channels=tuple(block_out_channels),
                layers_per_block=layers_per_block,
                latent_channels=latent_channels,
                norm_num_groups=norm_num_groups,
            )
        self.kl_weight = kl_weight
        self.export_dir = export_dir
        self.blur_sigma = blur_sigma
        self.train_crop_size = train_crop_size

    def reconstruct(self, image: Tensor, sample: bool = False) -> tuple[Tensor, Tensor]:
        """Reconstruction in ``[-1, 1]`` of ``(B, 3, H, W)`` images in ``[0, 1]``, and the KL (0 if pretrained)."""
        if isinstance(self.vae, FeatureAutoencoder):
            return self.vae(image * 2 - 1), image.new_zeros(len(image))
        posterior = self.vae.encode(image * 2 - 1).latent_dist
        latents = posterior.sample() if sample else posterior.mode()
        return self.vae.decode(latents).sample, posterior.kl()

    def random_crops(self, image: Tensor) -> Tensor:
        """One random ``train_crop_size`` square per image of ``(B, C, H, W)`` (the image itself if not larger)."""
        size = self.train_crop_size
        height, width = image.shape[-2:]
        if size is None or (size >= height and size >= width):
            return image
        size_y, size_x = min(size, height), min(size, width)
        tops = torch.randint(0, height - size_y + 1, (len(image),)).tolist()
        lefts = torch.randint(0, width - size_x + 1, (len(image),)).tolist()
        return torch.stack([im[:, t : t + size_y, s : s + size_x] for im, t, s in zip(image, tops, lefts, strict=True)])

    def compute_losses(self, batch: Batch) -> dict[str, Tensor]:
        """L1 reconstruction in ``[-1, 1]`` units plus ``kl_weight`` times the KL divergence (on crops in training)."""
        image = self.random_crops(batch["image"]) if self.training else batch["image"]
        target = image * 2 - 1
        reconstruction, kl = self.reconstruct(image, sample=self.training)
        l1 = F.l1_loss(reconstruction, target)
        # diffusers' kl() sums over the latent elements; normalise per input pixel so kl_weight is size-independent.
        kl = kl.mean() / target[0].numel()
        return {"loss": l1 + self.kl_weight * kl, "l1": l1, "kl": kl}

    def predict_anomaly(self, batch: Batch) -> Prediction:
        """Reconstruction-error map and its maximum as image score."""
        reconstruction, _ = self.reconstruct(batch["image"])
        error = (reconstruction - (batch["image"] * 2 - 1)).abs().amax(dim=1)
        anomaly_map = gaussian_blur(error, self.blur_sigma)
        return {"anomaly_map": anomaly_map, "pred_score": image_score(anomaly_map)}

    def _training_images(self) -> Iterator[Tensor]:
        """The training images in ``[-1, 1]``, whole (not cropped), on this module's device."""
        for batch in self.trainer.datamodule.train_dataloader():
            yield batch["image"].to(self.device) * 2 - 1

    def on_fit_start(self) -> None:
        """Fit the category classifier (base class), then standardise the pretrained encoder's training features."""
        super().on_fit_start()
        if isinstance(self.vae, FeatureAutoencoder):
            self.vae.fit_statistics(self._training_images(), "features")

    @torch.no_grad()
    def fit_scaling_factor(self, dataloader) -> float:
        """Set ``vae.config.scaling_factor`` to 1 / std of the posterior means over ``dataloader``."""
        total, total_sq, count = 0.0, 0.0, 0
        for batch in dataloader:
            latents = self.vae.encode(batch["image"].to(self.device) * 2 - 1).latent_dist.mean.double()
            total += latents.sum().item()
            total_sq += latents.square().sum().item()
            count += latents.numel()
        std = max((total_sq / count - (total / count) ** 2) ** 0.5, 1e-8)
        self.vae.register_to_config(scaling_factor=1.0 / std)
        return 1.0 / std

    def on_train_end(self) -> None:
        """Fit the latent scaling (or standardisation) on the training images and export the autoencoder (rank zero)."""
        if not self.trainer.is_global_zero:
            return
        was_training = self.training
        self.eval()
        if isinstance(self.vae, FeatureAutoencoder):
            self.vae.fit_statistics(self._training_images(), "latent")
        else:
            self.fit_scaling_factor(self.trainer.datamodule.train_dataloader())
        self.train(was_training)
        # run_directory, not trainer.log_dir: that broadcasts, and only rank zero is here (a hang under DDP)
        target = Path(self.export_dir) if self.export_dir else run_directory(self.trainer) / "autoencoder"
        replaced = atomic_write_dir(target, self.vae.save_pretrained)
        print(f"Autoencoder exported to {target} (scaling_factor={self.vae.config.scaling_factor:.5f})"
              + (f"; the autoencoder it replaces stays in {replaced}" if replaced else ""))
