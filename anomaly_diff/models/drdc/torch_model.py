"""DRDC's diffusion refinement: a class-conditioned pixel-space UNet that inpaints disjoint mask sets.

Zhan et al., "Enhancing Multi-Class Anomaly Detection via Diffusion Refinement with Dual Conditioning"; the
null-class label dropout and the guidance ``eps(null) + w * (eps(class) - eps(null))`` are Ho & Salimans,
"Classifier-Free Diffusion Guidance", 2021, Eq. 6. The choices the paper leaves open: ``README.md`` of this package.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from torch import Tensor, nn

from anomaly_diff.diffusion.inpainting import (
    INPAINT_INITS,
    InpaintInit,
    MaskLayout,
    disjoint_mask_sets,
    inpaint_disjoint,
    select_timesteps,
)
from anomaly_diff.diffusion.schedule import NoiseSchedule
from anomaly_diff.errors import ConfigError
from anomaly_diff.models.components.anomaly_map import image_score, resize_maps
from anomaly_diff.models.components.filters import high_pass, mean_filter
from anomaly_diff.models.drdc.base_model import BaseReconstructor
from anomaly_diff.models.drdc.fusion import FusionConfig, aggregate_refinement, fuse
from anomaly_diff.utils.checks import check_norm_groups

HeatmapMode = Literal["highpass", "residual"]


@dataclass(frozen=True)
class InpaintingConfig:
    """How the refinement inpaints at test time and turns the inpaintings into correction heatmaps.

    The defaults are the settings chosen on the embedded data's tuning split (``configs/drdc/embedded.yaml``).

    Attributes:
        num_timesteps: ``n_t``, timesteps of the sweep.
        start_timestep: ``t_{n_t}``, its first (noisiest) timestep.
        num_sets: ``n_s``, disjoint mask sets per configuration.
        patch_sizes: Mask square side of each inpainting configuration, in pixels.
        mask_layout: ``"interleaved"`` or ``"random"`` (:func:`~anomaly_diff.diffusion.inpainting.disjoint_mask_sets`).
        mask_seed: Seed of the ``"random"`` layout (the same sets for every batch).
        init: Start of the hidden region: ``"context"`` or ``"noise"`` (inpainting: a hidden pixel never reaches its
            own regeneration), or ``"noised_input"`` (SDEdit's start, which leaks it; the default, because it scored
            higher: ``experiments/results/drdc_ablation.md``) (:mod:`anomaly_diff.diffusion.inpainting`).
        resample: RePaint's repetitions of each step (1 = none).
        guidance_scale: Classifier-free guidance weight ``w`` toward the category (1 = conditional only, 0 =
            unconditional).
        filter_size: ``m``, side of the mean filter of the heatmaps.
        scales: Down-sampling factors at which heatmaps are taken.
        heatmap_mode: ``"residual"`` or ``"highpass"`` (:func:`correction_heatmaps`).

    Raises:
        ConfigError: A value is out of range (named with what would be right).
    """

    num_timesteps: int = 5
    start_timestep: int = 100
    num_sets: int = 4
    patch_sizes: tuple[int, ...] = (8,)
    mask_layout: MaskLayout = "interleaved"
    mask_seed: int = 0
    init: InpaintInit = "noised_input"
    resample: int = 1
    guidance_scale: float = 2.0
    filter_size: int = 5
    scales: tuple[int, ...] = (1, 2)
    heatmap_mode: HeatmapMode = "residual"

    def __post_init__(self) -> None:
        # Lists from YAML become tuples, so that the config stays hashable and compares equal to its copy.
        object.__setattr__(self, "patch_sizes", tuple(self.patch_sizes))
        object.__setattr__(self, "scales", tuple(self.scales))
        select_timesteps(self.start_timestep, self.num_timesteps)  # raises on an impossible sweep
        if self.num_sets < 1 or not self.patch_sizes or min(self.patch_sizes) < 1:
            raise ConfigError(f"inpainting.num_sets={self.num_sets} and patch_sizes={list(self.patch_sizes)} must be "
                             ">= 1 and non-empty (n_s disjoint mask sets of squares of those sides)")
        if self.init not in INPAINT_INITS:
            raise ConfigError(f"inpainting.init={self.init!r} is unknown: use one of {list(INPAINT_INITS)}")
        if self.mask_layout not in ("interleaved", "random"):
            raise ConfigError(f"inpainting.mask_layout={self.mask_layout!r} is unknown: use 'interleaved' or 'random'")
        if self.resample < 1 or self.guidance_scale < 0 or self.filter_size < 1:
            raise ConfigError(f"inpainting.resample={self.resample} and filter_size={self.filter_size} must be >= 1, "
                             f"guidance_scale={self.guidance_scale} >= 0")
        if not self.scales or min(self.scales) < 1:
            raise ConfigError(f"inpainting.scales={list(self.scales)} must be non-empty down-sampling factors >= 1")
        if self.heatmap_mode not in ("highpass", "residual"):
            raise ConfigError(f"inpainting.heatmap_mode={self.heatmap_mode!r} is unknown: use 'residual' or 'highpass'")

    @property
    def timesteps(self) -> list[int]:
        """The ``n_t`` timesteps of the sweep (:func:`~anomaly_diff.diffusion.inpainting.select_timesteps`)."""
        return select_timesteps(self.start_timestep, self.num_timesteps)


def correction_heatmaps(
    image: Tensor, inpainted: Tensor, filter_size: int, scales: Sequence[int], mode: HeatmapMode = "highpass"
) -> Tensor:
    """Correction heatmaps of inpaintings against their input, at several scales.

    Args:
        image: ``(N, C, H, W)`` input in ``[-1, 1]``.
        inpainted: ``(N, C, H, W)`` its inpainting.
        filter_size: Side ``m`` of the mean filter, in pixels of each scale.
        scales: Down-sampling factors of the residual (1 = full resolution); each must divide ``H`` and ``W``.
        mode: ``"highpass"``: ``mean_m(|r - mean_m(r)|)``; ``"residual"``: ``mean_m(|r|)``, with ``|.|`` averaged
            over the channels.

    Returns:
        ``(N, len(scales), H, W)`` heatmaps in the residual's units.

    Raises:
        ValueError: Unknown ``mode``, or a scale that does not divide the image.
    """
    if mode not in ("highpass", "residual"):
        raise ConfigError(f"unknown correction heatmap mode {mode!r}: use 'highpass' or 'residual'")
    height, width = image.shape[-2:]
    residual = image - inpainted
    maps = []
    for scale in scales:
        if scale < 1 or height % scale or width % scale:
            raise ConfigError(f"heatmap scale {scale} must be >= 1 and divide the {height}x{width} image")
        scaled = F.avg_pool2d(residual, scale) if scale > 1 else residual
        detail = high_pass(scaled, filter_size) if mode == "highpass" else scaled
        energy = mean_filter(detail.abs().mean(dim=1, keepdim=True), filter_size)
        maps.append(resize_maps(energy[:, 0], (height, width)))
    return torch.stack(maps, dim=1)


class RefinementOutput(NamedTuple):
    """What one refinement pass produces.

    Attributes:
        inpainted: ``(K, n_t, B, 3, H, W)`` the assembled inpainting in ``[-1, 1]`` per mask configuration
            (patch size) and timestep.
        heatmaps: ``(B, K, n_t, S, H, W)`` correction heatmaps per configuration, timestep and scale.
    """

    inpainted: Tensor
    heatmaps: Tensor


class DiffusionRefiner(nn.Module):
    """Class-conditioned pixel-space DDPM used as an inpainter, and its correction heatmaps.

    Args:
        num_classes: Number of categories; the UNet gets one more class embedding, the null class.
        block_out_channels: UNet channels per resolution (``len - 1`` halvings).
        layers_per_block: ResNet blocks per resolution.
        attention: Put self-attention at the lowest resolution.
        norm_num_groups: Groups of the group norms; must divide every entry of ``block_out_channels``.
        num_train_timesteps: Diffusion timesteps T. Defaults to 1000 (DDPM).
        beta_schedule: diffusers beta schedule name. Defaults to ``"linear"`` (DDPM).
        inpainting: The test-time settings (:class:`InpaintingConfig`); an attribute a caller may replace.
    """

    def __init__(
        self,
        num_classes: int,
        block_out_channels: Sequence[int] = (64, 128, 256, 256),
        layers_per_block: int = 2,
        attention: bool = True,
        norm_num_groups: int = 32,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "linear",
        inpainting: InpaintingConfig | None = None,
    ) -> None:
        super().__init__()
        check_norm_groups("model.norm_num_groups", norm_num_groups, block_out_channels, "block_out_channels")
        depth = len(block_out_channels)
        down = ["DownBlock2D"] * depth
        up = ["UpBlock2D"] * depth
        if attention:
            down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
        self.unet = UNet2DModel(
            in_channels=3,
            out_channels=3,
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            down_block_types=tuple(down),
            up_block_types=tuple(up),
            norm_num_groups=norm_num_groups,
            num_class_embeds=num_classes + 1,
        )
        self.schedule = NoiseSchedule(num_train_timesteps, beta_schedule)
        self.num_classes = num_classes
        self.null_class = num_classes
        self.inpainting = inpainting or InpaintingConfig()

    @property
    def inpainting(self) -> InpaintingConfig:
        """The test-time settings."""
        return self._inpainting

    @inpainting.setter
    def inpainting(self, config: InpaintingConfig) -> None:
        if not 0 <= config.start_timestep < self.schedule.num_timesteps:
            raise ConfigError(f"inpainting.start_timestep={config.start_timestep} must lie in [0, "
                             f"num_train_timesteps={self.schedule.num_timesteps})")
        self._inpainting = config

    def forward(self, noisy: Tensor, timesteps: Tensor, class_index: Tensor) -> Tensor:
        """Predict the noise of ``(N, 3, H, W)`` noisy images at ``(N,)`` timesteps for ``(N,)`` classes."""
        return self.unet(noisy, timesteps, class_labels=class_index).sample

    def training_loss(self, image: Tensor, class_index: Tensor, max_timestep: int, label_dropout: float) -> Tensor:
        """The DDPM epsilon MSE (Ho et al., 2020, Eq. 14) with classifier-free label dropout.

        Args:
            image: ``(B, 3, H, W)`` normal images in ``[0, 1]``.
            class_index: ``(B,)`` their classes.
            max_timestep: Timesteps are drawn uniformly from ``[0, max_timestep]``.
            label_dropout: Probability that a label is replaced by the null class (Ho & Salimans, 2021).

        Returns:
            The scalar loss.
        """
        x0 = image * 2 - 1
        timesteps = torch.randint(0, max_timestep + 1, (x0.shape[0],), device=x0.device)
        noise = torch.randn_like(x0)
        noisy = self.schedule.signal_rate(timesteps) * x0 + self.schedule.noise_rate(timesteps) * noise
        dropped = torch.rand(class_index.shape, device=class_index.device) < label_dropout
        labels = torch.where(dropped, torch.full_like(class_index, self.null_class), class_index)
        return F.mse_loss(self(noisy, timesteps, labels), noise)

    def guided_noise(self, noisy: Tensor, timesteps: Tensor, class_index: Tensor) -> Tensor:
        """Noise prediction with classifier-free guidance toward ``class_index`` (one batched UNet call).

        Args:
            noisy: ``(N, 3, H, W)`` noisy images.
            timesteps: ``(N,)`` timesteps.
            class_index: ``(N,)`` target classes.

        Returns:
            ``(N, 3, H, W)`` ``eps(null) + w * (eps(class) - eps(null))``; a single conditional pass when ``w = 1``.
        """
        scale = self.inpainting.guidance_scale
        if scale == 1.0:
            return self(noisy, timesteps, class_index)
        null = torch.full_like(class_index, self.null_class)
        if scale == 0.0:
            return self(noisy, timesteps, null)
        both = self(noisy.repeat(2, 1, 1, 1), timesteps.repeat(2), torch.cat([class_index, null]))
        conditional, unconditional = both.chunk(2)
        return unconditional + scale * (conditional - unconditional)

    def mask_sets(self, height: int, width: int, patch_size: int, device: torch.device) -> Tensor:
        """The ``(n_s, 1, H, W)`` disjoint mask sets of one configuration (fixed by ``mask_seed`` when random)."""
        config = self.inpainting
        generator = torch.Generator().manual_seed(config.mask_seed)
        sets = disjoint_mask_sets(height, width, config.num_sets, patch_size, config.mask_layout, generator)
        return sets.to(device)

    @torch.no_grad()
    def inpaint(self, image: Tensor, class_index: Tensor) -> Tensor:
        """Inpaint the disjoint mask sets of every configuration over the selected timesteps.

        Args:
            image: ``(B, 3, H, W)`` images in ``[0, 1]``.
            class_index: ``(B,)`` class of each image.

        Returns:
            ``(K, n_t, B, 3, H, W)`` assembled inpaintings in ``[-1, 1]``.
        """
        config = self.inpainting
        x = image * 2 - 1
        height, width = x.shape[-2:]
        return torch.stack([
            inpaint_disjoint(
                self.guided_noise,
                x,
                self.mask_sets(height, width, size, x.device),
                class_index,
                self.schedule,
                config.timesteps,
                config.init,
                config.resample,
            )
            for size in config.patch_sizes
        ])

    def heatmaps(self, image: Tensor, inpainted: Tensor) -> Tensor:
        """Correction heatmaps of inpaintings from :meth:`inpaint`.

        Args:
            image: ``(B, 3, H, W)`` images in ``[0, 1]``.
            inpainted: ``(K, n_t, B, 3, H, W)`` their inpaintings in ``[-1, 1]``.

        Returns:
            ``(B, K, n_t, S, H, W)`` heatmaps per configuration, timestep and scale.
        """
        config = self.inpainting
        flat = inpainted.flatten(0, 2)
        reference = (image * 2 - 1).repeat(flat.shape[0] // image.shape[0], 1, 1, 1)
        maps = correction_heatmaps(reference, flat, config.filter_size, config.scales, config.heatmap_mode)
        return maps.unflatten(0, inpainted.shape[:3]).permute(2, 0, 1, 3, 4, 5)

    def refine(self, image: Tensor, class_index: Tensor) -> RefinementOutput:
        """Inpaint every configuration of a batch and compute its correction heatmaps.

        Args:
            image: ``(B, 3, H, W)`` images in ``[0, 1]``.
            class_index: ``(B,)`` class of each image.

        Returns:
            The inpaintings and heatmaps (:class:`RefinementOutput`).
        """
        inpainted = self.inpaint(image, class_index)
        return RefinementOutput(inpainted=inpainted, heatmaps=self.heatmaps(image, inpainted))


class DRDCOutput(NamedTuple):
    """Every heatmap component of one DRDC pass.

    Attributes:
        anomaly_map: ``(B, H, W)`` the fused map.
        pred_score: ``(B,)`` its top-k mean.
        base_map: ``(B, H, W)`` the base heatmap.
        refinement_map: ``(B, H, W)`` the aggregated correction heatmap (zeros when the fusion is ``"base"``).
        correction_maps: ``(B, K, n_t, S, H, W)`` the correction heatmaps per inpainting configuration, timestep
            and scale (``K = 0`` when the fusion is ``"base"``).
    """

    anomaly_map: Tensor
    pred_score: Tensor
    base_map: Tensor
    refinement_map: Tensor
    correction_maps: Tensor


class DRDCModel(nn.Module):
    """DRDC as one torch module: base heatmap, diffusion refinement, spatio-temporal fusion.

    Args:
        base: The trained base model.
        refiner: The trained diffusion refiner, with its test-time :class:`InpaintingConfig`.
        fusion: How the two are combined (:class:`~anomaly_diff.models.drdc.fusion.FusionConfig`).
    """

    def __init__(self, base: BaseReconstructor, refiner: DiffusionRefiner, fusion: FusionConfig | None = None) -> None:
        super().__init__()
        self.base = base
        self.refiner = refiner
        self.fusion = fusion or FusionConfig()

    @torch.no_grad()
    def forward(self, image: Tensor, class_index: Tensor) -> DRDCOutput:
        """Score ``(B, 3, H, W)`` images in ``[0, 1]`` of the ``(B,)`` classes (:class:`DRDCOutput`).

        The refinement is skipped when the fusion is ``"base"``, so a base-only model costs the base model's time.
        """
        base_map = self.base.anomaly_map(image)
        if self.fusion.mode == "base":
            height, width = image.shape[-2:]
            correction_maps = base_map.new_zeros(image.shape[0], 0, 1, 1, height, width)
            refinement_map = torch.zeros_like(base_map)
        else:
            correction_maps = self.refiner.refine(image, class_index).heatmaps
            refinement_map = aggregate_refinement(correction_maps, self.fusion.temporal)
        anomaly_map = fuse(base_map, refinement_map, self.fusion.gamma, self.fusion.mode)
        score = image_score(anomaly_map, self.fusion.top_k)
        return DRDCOutput(anomaly_map, score, base_map, refinement_map, correction_maps)
