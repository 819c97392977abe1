"""DeCo-Diff as a plain ``nn.Module``: the class-conditioned deviation UNet, its size presets, and inference.

Beizaee et al., "Correcting Deviations from Normality: A Reformulated Diffusion Model for Multi-Class
Unsupervised Anomaly Detection" (CVPR 2025); the method as implemented: ``anomaly_diff/models/deco_diff/README.md``.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from diffusers import UNet2DConditionModel
from torch import Tensor, nn

from anomaly_diff.diffusion.deviation import correct_deviations
from anomaly_diff.diffusion.schedule import NoiseSchedule, check_chain
from anomaly_diff.errors import ConfigError
from anomaly_diff.models.components.anomaly_map import (
    Fusion,
    clip_and_scale,
    fuse_maps,
    gaussian_blur,
    image_score,
    resize_maps,
)
from anomaly_diff.utils.checks import check_norm_groups
from anomaly_diff.utils.settings import as_settings


@dataclass(frozen=True)
class UNetPreset:
    """Shape of the deviation UNet.

    Attributes:
        base_channels: Channels of the first level; level ``i`` has ``base_channels * channel_mult[i]``.
        num_heads: Attention heads at the first level. The head width ``base_channels // num_heads`` is kept
            at every level (the reference's ``num_head_channels``), so deeper levels have more heads.
        context_dim: Width of the class embedding that cross-attention attends to.
        channel_mult: Channel multiplier per level; ``len - 1`` downsamplings.
        attention: Per level, whether its blocks carry a spatial transformer (self- plus cross-attention).
            Without any, the class condition would not reach the network.
        layers_per_block: Residual blocks per level (the up path has one more, as in the reference).
        norm_num_groups: Groups of the group norms; must divide every level's channels.
        dropout: Dropout in the residual blocks.
    """

    base_channels: int
    num_heads: int
    context_dim: int
    channel_mult: tuple[int, ...] = (1, 2, 4)
    attention: tuple[bool, ...] = (True, True, True)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    dropout: float = 0.4


# The reference's UNet_XS..XL (``models.py``: model_channels 64..320, heads 4/4/6/8/12, context 2x channels,
# channel_mult [1, 2, 4], attention_resolutions [4, 2, 1] = every level, 2 res blocks, dropout 0.4). "tiny" is
# this project's CPU preset: narrower, two levels of attention, one res block per level, and no dropout (why: the
# DeCo-Diff README, "Attention at every level").
UNET_PRESETS: dict[str, UNetPreset] = {
    "tiny": UNetPreset(
        32,
        2,
        64,
        channel_mult=(1, 2, 2),
        attention=(False, True, True),
        layers_per_block=1,
        norm_num_groups=16,
        dropout=0.0,
    ),
    "XS": UNetPreset(64, 4, 128),
    "S": UNetPreset(128, 4, 256),
    "M": UNetPreset(192, 6, 384),
    "L": UNetPreset(256, 8, 512),
    "XL": UNetPreset(320, 12, 640),
}


def resolve_preset(unet: str | UNetPreset) -> UNetPreset:
    """Return ``unet`` itself or the preset it names.

    Raises:
        ValueError: Unknown preset name.
    """
    if isinstance(unet, UNetPreset):
        return unet
    if unet not in UNET_PRESETS:
        raise ConfigError(f"unknown UNet preset {unet!r}: choose one of {sorted(UNET_PRESETS)} or give a UNetPreset")
    return UNET_PRESETS[unet]


def build_unet(preset: UNetPreset, latent_channels: int = 4) -> UNet2DConditionModel:
    """Build the diffusers UNet of a preset (LDM layout: res blocks + spatial transformers with cross-attention).

    Raises:
        ValueError: The preset's lists differ in length, or ``norm_num_groups`` does not divide the channels.
    """
    if len(preset.attention) != len(preset.channel_mult):
        raise ConfigError(
            f"UNetPreset.attention {preset.attention} needs one entry per channel_mult level {preset.channel_mult}"
        )
    channels = [preset.base_channels * m for m in preset.channel_mult]
    check_norm_groups("UNetPreset norm_num_groups", preset.norm_num_groups, channels, "level's channels")
    if not 1 <= preset.num_heads <= preset.base_channels:
        raise ConfigError(f"UNetPreset num_heads={preset.num_heads} must lie in [1, base_channels]")
    head_width = preset.base_channels // preset.num_heads
    down = [("CrossAttnDownBlock2D" if a else "DownBlock2D") for a in preset.attention]
    up = [("CrossAttnUpBlock2D" if a else "UpBlock2D") for a in reversed(preset.attention)]
    return UNet2DConditionModel(
        in_channels=latent_channels,
        out_channels=latent_channels,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        mid_block_type="UNetMidBlock2DCrossAttn",
        block_out_channels=tuple(channels),
        layers_per_block=preset.layers_per_block,
        norm_num_groups=preset.norm_num_groups,
        cross_attention_dim=preset.context_dim,
        # diffusers' historical name: ``attention_head_dim`` is the number of heads per level
        attention_head_dim=tuple(c // head_width for c in channels),
        dropout=preset.dropout,
    )


@dataclass(frozen=True)
class AnomalyMapConfig:
    """How the anomaly map is built from the correction (defaults: the reference at 256 x 256).

    Attributes:
        image_clip: Clip of the image discrepancy ``max_RGB |recon - reference|`` in ``[-1, 1]`` units.
        image_scale: Its scale after clipping.
        image_sigma: Gaussian blur of the image part, in pixels.
        latent_clip: Clip of the latent discrepancy ``mean_C |z_hat - z|``.
        latent_scale: Its scale after clipping.
        latent_sigma: Gaussian blur of the latent part, in latent cells (before upsampling).
        fusion: ``"geometric"`` ``sqrt(image * latent)`` or ``"arithmetic"`` mean.
        image_reference: What the reconstruction is compared with in image space: ``"decoded"`` = the
            autoencoder's reconstruction of the input latent (the reference: autoencoder errors cancel), or
            ``"input"`` = the input image. Decoder outputs are compared unclamped, as the reference does.
        score_top_k: The image score is the mean of the ``score_top_k`` highest map values (1 = the maximum).
    """

    image_clip: float = 0.4
    image_scale: float = 2.5
    image_sigma: float = 3.0
    latent_clip: float = 0.2
    latent_scale: float = 5.0
    latent_sigma: float = 1.0
    fusion: Fusion = "geometric"
    image_reference: Literal["decoded", "input"] = "decoded"
    score_top_k: int = 1


def compose_maps(image_diff: Tensor, latent_diff: Tensor, cfg: AnomalyMapConfig) -> tuple[Tensor, Tensor, Tensor]:
    """The anomaly map from the two discrepancies (the reference's ``calculate_anomaly_map``).

    Args:
        image_diff: ``(B, H, W)`` ``max_RGB |reconstruction - reference|`` in ``[-1, 1]`` units.
        latent_diff: ``(B, h, w)`` ``mean_C |z_hat - z|``.
        cfg: Clips, scales, blurs and fusion.

    Returns:
        ``(anomaly_map, image_map, latent_map)``, each ``(B, H, W)``.
    """
    image_map = gaussian_blur(clip_and_scale(image_diff, cfg.image_clip, cfg.image_scale), cfg.image_sigma)
    latent_map = gaussian_blur(clip_and_scale(latent_diff, cfg.latent_clip, cfg.latent_scale), cfg.latent_sigma)
    latent_map = resize_maps(latent_map, image_diff.shape[-2:])
    return fuse_maps(image_map, latent_map, cfg.fusion), image_map, latent_map


class DeCoDiffOutput(NamedTuple):
    """Inference result of a batch.

    Attributes:
        anomaly_map: ``(B, H, W)`` fused map.
        pred_score: ``(B,)`` image scores.
        reconstruction: ``(B, 3, H, W)`` decoded corrected latents, clamped to ``[0, 1]`` for display.
        image_map: ``(B, H, W)`` image part of the map.
        latent_map: ``(B, H, W)`` latent part, upsampled to the image.
    """

    anomaly_map: Tensor
    pred_score: Tensor
    reconstruction: Tensor
    image_map: Tensor
    latent_map: Tensor


class DeCoDiffModel(nn.Module):
    """Class-conditioned deviation UNet in the latent space of a frozen autoencoder.

    The class condition is a learned one-token cross-attention context, as in the reference (LDM ``UNetModel``).

    Args:
        codec: The frozen autoencoder, a module with ``encode(image (B, 3, H, W) in [0, 1]) -> (B, C, h, w)``
            and ``decode(latents, clamp) -> (B, 3, H, W)`` in ``[0, 1]`` (raw, possibly overshooting, unless
            ``clamp``) (:class:`~anomaly_diff.models.components.autoencoder.LatentCodec`).
        num_classes: Number of categories.
        unet: A preset name (``"tiny"``, ``"XS"`` .. ``"XL"``) or a :class:`UNetPreset`. Defaults to ``"L"``
            (the released weights).
        latent_channels: Channels of the codec's latents. Defaults to ``4``.
        num_train_timesteps: Diffusion timesteps T. Defaults to ``10``.
        beta_schedule: diffusers beta schedule. Defaults to ``"squaredcos_cap_v2"``.
        timesteps: The test-time chain, strictly decreasing timesteps in ``[0, T)``. Defaults to the reference's
            ``(8, 6, 4, 2, 0)`` (:func:`~anomaly_diff.diffusion.schedule.respaced_timesteps`).
        anomaly_map: How maps and scores are computed. Defaults to ``AnomalyMapConfig()`` (the reference's).

    Example:
        >>> from anomaly_diff.models.components.autoencoder import LatentCodec
        >>> from diffusers import AutoencoderKL
        >>> vae = AutoencoderKL(block_out_channels=(8, 16), norm_num_groups=8)
        >>> model = DeCoDiffModel(LatentCodec(vae), num_classes=3, unet="tiny")
        >>> model(torch.randn(2, 4, 16, 16), torch.tensor([0, 9]), torch.tensor([0, 2])).shape
        torch.Size([2, 4, 16, 16])
    """

    def __init__(
        self,
        codec: nn.Module,
        num_classes: int,
        unet: str | UNetPreset = "L",
        latent_channels: int = 4,
        num_train_timesteps: int = 10,
        beta_schedule: str = "squaredcos_cap_v2",
        timesteps: Sequence[int] = (8, 6, 4, 2, 0),
        anomaly_map: AnomalyMapConfig | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        preset = resolve_preset(unet)
        self.codec = codec
        self.unet = build_unet(preset, latent_channels)
        self.class_embedding = nn.Embedding(num_classes, preset.context_dim)
        self.schedule = NoiseSchedule(num_train_timesteps, beta_schedule)
        self.timesteps = check_chain(timesteps, num_train_timesteps)
        self.map_config = as_settings(AnomalyMapConfig, anomaly_map)

    def forward(self, latents: Tensor, timesteps: Tensor, class_index: Tensor) -> Tensor:
        """Predict the deviation of ``(B, C, h, w)`` latents at ``(B,)`` timesteps for ``(B,)`` classes."""
        context = self.class_embedding(class_index)[:, None, :]
        return self.unet(latents, timesteps, encoder_hidden_states=context, return_dict=False)[0]

    @torch.no_grad()
    def correct(self, latents: Tensor, class_index: Tensor, timesteps: Sequence[int] | None = None) -> Tensor:
        """Correct ``(B, C, h, w)`` latents along ``timesteps`` (default: the model's chain); returns ``x0_hat``."""
        timesteps = self.timesteps if timesteps is None else timesteps
        return correct_deviations(lambda x, t: self(x, t, class_index), latents, self.schedule, timesteps)

    @torch.no_grad()
    def detect(self, image: Tensor, class_index: Tensor, timesteps: Sequence[int] | None = None) -> DeCoDiffOutput:
        """Anomaly maps, scores and reconstructions of ``(B, 3, H, W)`` images in ``[0, 1]``.

        Args:
            image: ``(B, 3, H, W)`` images in ``[0, 1]``.
            class_index: ``(B,)`` the true category of each image.
            timesteps: Overrides the model's chain.

        Returns:
            Maps, scores, reconstructions and the two map parts.
        """
        cfg = self.map_config
        latents = self.codec.encode(image)
        corrected = self.correct(latents, class_index, timesteps).float()
        reconstruction = self.codec.decode(corrected, clamp=False)
        reference = self.codec.decode(latents, clamp=False) if cfg.image_reference == "decoded" else image.float()
        # |.| in [-1, 1] units, as the reference measures it: twice the difference in [0, 1] units. The decoder
        # outputs are not clamped first: the reference compares them raw (they may overshoot [-1, 1]).
        image_diff = 2.0 * (reconstruction - reference).abs().amax(dim=1)
        latent_diff = (corrected - latents.float()).abs().mean(dim=1)
        anomaly_map, image_map, latent_map = compose_maps(image_diff, latent_diff, cfg)
        return DeCoDiffOutput(
            anomaly_map=anomaly_map,
            pred_score=image_score(anomaly_map, cfg.score_top_k),
            reconstruction=reconstruction.clamp(0.0, 1.0),
            image_map=image_map,
            latent_map=latent_map,
        )
