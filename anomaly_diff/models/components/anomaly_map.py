"""Anomaly-map utilities shared by the models: Gaussian smoothing, clipping and scaling, fusion, image scores.

The Gaussian blur is torchvision's ``gaussian_blur`` (batched, on the tensors' device) with the kernel radius
chosen like ``scipy.ndimage.gaussian_filter`` (``int(truncate * sigma + 0.5)``, truncate 4), which the
DeCo-Diff reference uses per image on the CPU; the two agree except at the border, where torchvision reflects
without repeating the edge pixel (scipy's ``mode="mirror"``, not its default ``"reflect"``).
"""

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.functional import gaussian_blur as tv_gaussian_blur

Fusion = Literal["geometric", "arithmetic"]


def gaussian_blur(maps: Tensor, sigma: float, truncate: float = 4.0) -> Tensor:
    """Smooth maps with a Gaussian of standard deviation ``sigma`` pixels.

    Args:
        maps: ``(B, H, W)`` or ``(B, C, H, W)`` maps.
        sigma: Standard deviation in pixels; ``0`` returns the maps unchanged.
        truncate: Kernel radius in standard deviations (scipy's default). Defaults to ``4.0``.

    Returns:
        The smoothed maps, same shape. The radius is capped at ``min(H, W) - 1``, the most reflection
        padding allows.

    Raises:
        ValueError: ``sigma`` is negative.
    """
    if sigma < 0:
        raise ValueError(f"Gaussian blur sigma must be >= 0, got {sigma}")
    if sigma == 0:
        return maps
    radius = min(int(truncate * sigma + 0.5), min(maps.shape[-2:]) - 1)
    if radius < 1:
        return maps
    flat = maps.unsqueeze(1) if maps.ndim == 3 else maps
    out = tv_gaussian_blur(flat, [2 * radius + 1, 2 * radius + 1], [float(sigma), float(sigma)])
    return out.squeeze(1) if maps.ndim == 3 else out


def clip_and_scale(maps: Tensor, clip: float, scale: float) -> Tensor:
    """Clamp discrepancies to ``[0, clip]`` and multiply by ``scale`` (``clip * scale = 1`` gives ``[0, 1]``)."""
    if clip <= 0:
        raise ValueError(f"clip must be > 0, got {clip}")
    return maps.clamp(0.0, clip) * scale


def resize_maps(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinearly resize ``(B, H, W)`` maps to ``size`` (``align_corners=False``, as skimage's ``resize``)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps.unsqueeze(1), size=tuple(size), mode="bilinear", align_corners=False).squeeze(1)


def fuse_maps(first: Tensor, second: Tensor, mode: Fusion = "geometric") -> Tensor:
    """Fuse two non-negative maps of the same shape.

    Args:
        first: Maps, any shape.
        second: Maps, same shape.
        mode: ``"geometric"`` for ``sqrt(first * second)``, ``"arithmetic"`` for ``(first + second) / 2``.

    Returns:
        The fused maps.

    Raises:
        ValueError: Unknown ``mode``.
    """
    if mode == "geometric":
        return (first * second).clamp_min(0.0).sqrt()
    if mode == "arithmetic":
        return 0.5 * (first + second)
    raise ValueError(f"unknown fusion {mode!r}: use 'geometric' or 'arithmetic'")


def image_score(maps: Tensor, top_k: int = 1) -> Tensor:
    """Image-level score: the mean of the ``top_k`` largest values of each map (``top_k=1`` is the maximum).

    Args:
        maps: ``(B, H, W)`` maps.
        top_k: How many of the highest pixels to average; must be in ``[1, H * W]``.

    Returns:
        ``(B,)`` scores.

    Raises:
        ValueError: ``top_k`` is out of range.
    """
    flat = maps.flatten(1)
    if not 1 <= top_k <= flat.shape[1]:
        raise ValueError(f"top_k={top_k} must lie in [1, {flat.shape[1]}] (pixels per map)")
    if top_k == 1:
        return flat.amax(dim=1)
    return torch.topk(flat, top_k, dim=1).values.mean(dim=1)
