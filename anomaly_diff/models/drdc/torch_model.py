"""DRDC's diffusion refinement: a class-conditioned pixel-space UNet that inpaints disjoint mask sets.

The paper (Zhan et al., "Enhancing Multi-Class Anomaly Detection via Diffusion Refinement with Dual
Conditioning") states the parts, not their code; the choices here are documented in ``README.md`` of this package:

- **Model conditioning**: a diffusers ``UNet2DModel`` at the working resolution whose ``num_class_embeds`` class
  embedding is added to the timestep embedding. It has one extra "null" class (index ``num_classes``), which the
  training replaces the label with at random (Ho & Salimans, "Classifier-Free Diffusion Guidance", 2021).
- **Test-time conditioning**: classifier-free guidance toward the image's category,
  ``eps = eps(null) + w * (eps(class) - eps(null))`` (Ho & Salimans, Eq. 6 in their ``1 + w`` form), which keeps
  the reverse process on that category; ``w = 1`` is plain conditioning, ``w = 0`` ignores the class.
- **Inpainting**: each configuration (a mask ``patch_size``) splits the image into ``n_s`` disjoint mask sets,
  all inpainted in one batch over ``n_t`` timesteps from ``t_{n_t}``
  (:func:`~anomaly_diff.diffusion.inpainting.inpaint_disjoint`).
- **High-frequency correction heatmaps**: from the residual ``r = x - x_hat`` of each timestep and configuration,
  at each scale ``s`` (``r`` average-pooled by ``s``), :func:`correction_heatmaps` keeps the local energy of
  the detail that a mean filter of size ``m`` removes, ``mean_m(|r - mean_m(r)|)`` (``"highpass"``), or the
  smoothed residual itself, ``mean_m(|r|)`` (``"residual"``), upsampled back to the image.
"""

from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from torch import Tensor, nn

from anomaly_diff.diffusion.inpainting import (
    InpaintInit,
    MaskLayout,
    disjoint_mask_sets,
    inpaint_disjoint,
    select_timesteps,
)
from anomaly_diff.diffusion.schedule import NoiseSchedule
from anomaly_diff.models.components.anomaly_map import resize_maps
from anomaly_diff.models.components.filters import high_pass, mean_filter

HeatmapMode = Literal["highpass", "residual"]


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
        raise ValueError(f"unknown correction heatmap mode {mode!r}: use 'highpass' or 'residual'")
    height, width = image.shape[-2:]
    residual = image - inpainted
    maps = []
    for scale in scales:
        if scale < 1 or height % scale or width % scale:
            raise ValueError(f"heatmap scale {scale} must be >= 1 and divide the {height}x{width} image")
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
        num_timesteps: ``n_t``, timesteps run at test time.
        start_timestep: ``t_{n_t}``, the first of them.
        num_sets: ``n_s``, disjoint mask sets per configuration.
        patch_sizes: Mask square side of each inpainting configuration, in pixels.
        mask_layout: ``"interleaved"`` or ``"random"`` (:func:`~anomaly_diff.diffusion.inpainting.disjoint_mask_sets`).
        init: Start of the hidden region, ``"noised_input"`` or ``"noise"``.
        guidance_scale: Classifier-free guidance weight ``w`` (1 = conditional only, 0 = unconditional).
        filter_size: ``m``, side of the mean filter of the heatmaps.
        scales: Down-sampling factors at which heatmaps are taken.
        heatmap_mode: ``"highpass"`` or ``"residual"`` (:func:`correction_heatmaps`).
        mask_seed: Seed of the ``"random"`` mask layout (the same sets for every batch).
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
        mask_seed: int = 0,
    ) -> None:
        super().__init__()
        bad = [c for c in block_out_channels if c % norm_num_groups]
        if bad:
            raise ValueError(f"norm_num_groups={norm_num_groups} must divide every block_out_channels, not {bad}")
        if not 0 <= start_timestep < num_train_timesteps:
            raise ValueError(
                f"start_timestep={start_timestep} must lie in [0, num_train_timesteps={num_train_timesteps})"
            )
        if num_sets < 1 or min(patch_sizes, default=1) < 1:
            raise ValueError(f"num_sets={num_sets} and patch_sizes={list(patch_sizes)} must be >= 1 (n_s disjoint mask "
                             "sets of squares of those sides)")
        if not patch_sizes or not scales or filter_size < 1 or guidance_scale < 0:
            raise ValueError(
                f"need non-empty patch_sizes ({list(patch_sizes)}) and scales ({list(scales)}), filter_size >= 1 "
                f"({filter_size}) and guidance_scale >= 0 ({guidance_scale})"
            )
        self.timesteps = select_timesteps(start_timestep, num_timesteps)
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
        self.num_sets = num_sets
        self.patch_sizes = list(patch_sizes)
        self.mask_layout = mask_layout
        self.init = init
        self.guidance_scale = guidance_scale
        self.filter_size = filter_size
        self.scales = list(scales)
        self.heatmap_mode = heatmap_mode
        self.mask_seed = mask_seed

    def forward(self, noisy: Tensor, timesteps: Tensor, class_index: Tensor) -> Tensor:
        """Predict the noise of ``(N, 3, H, W)`` noisy images at ``(N,)`` timesteps for ``(N,)`` classes."""
        return self.unet(noisy, timesteps, class_labels=class_index).sample

    def guided_noise(self, noisy: Tensor, timesteps: Tensor, class_index: Tensor) -> Tensor:
        """Noise prediction with classifier-free guidance toward ``class_index`` (one batched UNet call).

        Args:
            noisy: ``(N, 3, H, W)`` noisy images.
            timesteps: ``(N,)`` timesteps.
            class_index: ``(N,)`` target classes.

        Returns:
            ``(N, 3, H, W)`` ``eps(null) + w * (eps(class) - eps(null))``; a single conditional pass when ``w = 1``.
        """
        if self.guidance_scale == 1.0:
            return self(noisy, timesteps, class_index)
        null = torch.full_like(class_index, self.null_class)
        if self.guidance_scale == 0.0:
            return self(noisy, timesteps, null)
        both = self(noisy.repeat(2, 1, 1, 1), timesteps.repeat(2), torch.cat([class_index, null]))
        conditional, unconditional = both.chunk(2)
        return unconditional + self.guidance_scale * (conditional - unconditional)

    def mask_sets(self, height: int, width: int, patch_size: int, device: torch.device) -> Tensor:
        """The ``(n_s, 1, H, W)`` disjoint mask sets of one configuration (fixed by ``mask_seed`` when random)."""
        generator = torch.Generator().manual_seed(self.mask_seed)
        sets = disjoint_mask_sets(height, width, self.num_sets, patch_size, self.mask_layout, generator)
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
        x = image * 2 - 1
        height, width = x.shape[-2:]
        return torch.stack([
            inpaint_disjoint(
                self.guided_noise,
                x,
                self.mask_sets(height, width, size, x.device),
                class_index,
                self.schedule,
                self.timesteps,
                self.init,
            )
            for size in self.patch_sizes
        ])

    def heatmaps(self, image: Tensor, inpainted: Tensor) -> Tensor:
        """Correction heatmaps of inpaintings from :meth:`inpaint`.

        Args:
            image: ``(B, 3, H, W)`` images in ``[0, 1]``.
            inpainted: ``(K, n_t, B, 3, H, W)`` their inpaintings in ``[-1, 1]``.

        Returns:
            ``(B, K, n_t, S, H, W)`` heatmaps per configuration, timestep and scale.
        """
        flat = inpainted.flatten(0, 2)
        reference = (image * 2 - 1).repeat(flat.shape[0] // image.shape[0], 1, 1, 1)
        maps = correction_heatmaps(reference, flat, self.filter_size, self.scales, self.heatmap_mode)
        return maps.unflatten(0, inpainted.shape[:3]).permute(2, 0, 1, 3, 4, 5)

    def forward_refinement(self, image: Tensor, class_index: Tensor) -> RefinementOutput:
        """Inpaint every configuration of a batch and compute its correction heatmaps.

        Args:
            image: ``(B, 3, H, W)`` images in ``[0, 1]``.
            class_index: ``(B,)`` class of each image.

        Returns:
            The inpaintings and heatmaps (:class:`RefinementOutput`).
        """
        inpainted = self.inpaint(image, class_index)
        return RefinementOutput(inpainted=inpainted, heatmaps=self.heatmaps(image, inpainted))
