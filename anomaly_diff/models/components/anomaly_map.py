"""Anomaly-map utilities shared by the models: Gaussian smoothing, clipping and scaling, resizing, fusion, scores.

``gaussian_blur`` and ``resize_maps`` reproduce, batched and on the tensors' device, what the DeCo-Diff reference
computes per image in numpy, over every pixel, borders included:

* ``gaussian_blur`` is ``scipy.ndimage.gaussian_filter(map, sigma)`` with its defaults: the kernel of scipy's
  ``_gaussian_kernel1d`` (radius ``int(truncate * sigma + 0.5)``, ``exp(-x**2 / (2 * sigma**2))`` normalised to
  sum 1) applied along each axis, with ``mode="reflect"`` (``d c b a | a b c d | d c b a``, repeated for kernels
  wider than the map).
* ``resize_maps`` is ``skimage.transform.resize(map, size, order=1)`` with its defaults: skimage turns its
  ``mode="reflect"`` into ``scipy.ndimage.zoom(..., order=1, mode="mirror", grid_mode=True)``, i.e. linear
  interpolation at ``(o + 0.5) * in / out - 0.5`` with a whole-sample mirror (``c b | a b c | b a``) at the border.
  An axis that shrinks is first anti-aliased as skimage does: ``gaussian_filter`` with
  ``sigma = (in / out - 1) / 2`` and ``mode="mirror"`` along it.

Both are separable: each axis is one dense ``(out, in)`` matrix (float64, border folded in), applied as
``rows @ maps @ cols.T``: two matmuls per call, fast on the CPU at map sizes of a few hundred pixels. TF32 matmuls
on a GPU (``torch.backends.cuda.matmul.allow_tf32``, off by default) lose precision.
"""

from functools import lru_cache
from typing import Literal

import torch
from torch import Tensor

from anomaly_diff.errors import ConfigError

Fusion = Literal["geometric", "arithmetic"]
Boundary = Literal["reflect", "mirror"]


def _fold_indices(indices: Tensor, size: int, boundary: Boundary) -> Tensor:
    """Map out-of-range indices into ``[0, size)`` as scipy.ndimage's ``"reflect"`` or ``"mirror"`` mode does.

    torch's ``F.pad(mode="reflect")`` is ``"mirror"`` and refuses pads >= size, and torchvision's ``"symmetric"``
    padding (scipy's ``"reflect"``) fails for pads > size; scipy reflects as often as a wide kernel needs, hence this.
    """
    if boundary == "reflect":
        folded = indices.remainder(2 * size)
        return torch.where(folded < size, folded, 2 * size - 1 - folded)
    if size == 1:
        return torch.zeros_like(indices)
    folded = indices.remainder(2 * size - 2)
    return torch.where(folded < size, folded, 2 * size - 2 - folded)


@lru_cache(maxsize=64)  # the same few map sizes come back every batch; the matrices are only read
def _blur_matrix(size: int, sigma: float, truncate: float, boundary: Boundary) -> Tensor:
    """``(size, size)`` float64 matrix of ``scipy.ndimage.gaussian_filter1d`` with scipy's ``boundary`` mode."""
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1)
    weights = torch.exp(-0.5 / sigma**2 * offsets.double() ** 2)
    rows = torch.arange(size).unsqueeze(1).expand(size, offsets.numel())
    cols = _fold_indices(rows + offsets, size, boundary)
    matrix = torch.zeros(size, size, dtype=torch.float64)
    return matrix.index_put_((rows, cols), (weights / weights.sum()).expand(size, -1), accumulate=True)


@lru_cache(maxsize=64)
def _resize_matrix(length: int, size: int) -> Tensor:
    """``(size, length)`` float64 matrix of ``skimage.transform.resize(order=1)`` along one axis."""
    coords = (torch.arange(size, dtype=torch.float64) + 0.5) * (length / size) - 0.5
    coords = ((length - 1) - ((length - 1) - coords.abs()).abs()).clamp(0, length - 1)
    low = coords.floor().long()
    high = (low + 1).clamp(max=length - 1)
    rows = torch.arange(size)
    matrix = torch.zeros(size, length, dtype=torch.float64)
    matrix.index_put_((rows, low), 1 - (coords - low), accumulate=True)
    matrix.index_put_((rows, high), coords - low, accumulate=True)
    if size < length:
        matrix = matrix @ _blur_matrix(length, (length / size - 1) / 2, 4.0, "mirror")
    return matrix


def _apply(maps: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """``rows @ maps @ cols.T`` over the last two dims, in float32 or wider; floating maps keep their dtype."""
    work = maps.to(torch.promote_types(maps.dtype, torch.float32))
    out = rows.to(work) @ work @ cols.to(work).mT
    return out.to(maps.dtype) if maps.is_floating_point() else out


def gaussian_blur(maps: Tensor, sigma: float, truncate: float = 4.0) -> Tensor:
    """Smooth maps like ``scipy.ndimage.gaussian_filter(map, sigma, truncate=truncate)`` (``mode="reflect"``).

    Args:
        maps: ``(..., H, W)`` maps, e.g. ``(B, H, W)`` or ``(B, C, H, W)``; computed in float32 or wider.
        sigma: Standard deviation in pixels; ``0`` returns the maps unchanged.
        truncate: Kernel radius in standard deviations (scipy's default). Defaults to ``4.0``.

    Returns:
        The smoothed maps, same shape (and dtype if floating point, float32 otherwise).

    Raises:
        ValueError: ``sigma`` is negative.
    """
    if sigma < 0:
        raise ConfigError(f"Gaussian blur sigma must be >= 0, got {sigma}")
    if sigma == 0:
        return maps
    rows, cols = (_blur_matrix(length, sigma, truncate, "reflect") for length in maps.shape[-2:])
    return _apply(maps, rows, cols)


def clip_and_scale(maps: Tensor, clip: float, scale: float) -> Tensor:
    """Clamp discrepancies to ``[0, clip]`` and multiply by ``scale`` (``clip * scale = 1`` gives ``[0, 1]``)."""
    if clip <= 0:
        raise ConfigError(f"clip must be > 0, got {clip}")
    return maps.clamp(0.0, clip) * scale


def resize_maps(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize ``(..., H, W)`` maps to ``size`` like ``skimage.transform.resize(map, size, order=1)``.

    Bilinear with skimage's ``"reflect"`` border; shrinking an axis anti-aliases it first, as skimage does.
    """
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    rows, cols = (_resize_matrix(length, int(target)) for length, target in zip(maps.shape[-2:], size, strict=True))
    return _apply(maps, rows, cols)


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
    raise ConfigError(f"unknown fusion {mode!r}: use 'geometric' or 'arithmetic'")


def image_score(maps: Tensor, top_k: int = 1) -> Tensor:
    """Image-level score: the mean of the ``top_k`` largest values of each map (``top_k=1`` is the maximum).

    Args:
        maps: ``(B, H, W)`` maps.
        top_k: How many of the highest pixels to average; must be in ``[1, H * W]``.

    Returns:
        ``(B,)`` scores.

    Raises:
        ConfigError: ``top_k`` is out of range (the one check of every model's ``top_k``: only here is the
            number of pixels known).
    """
    flat = maps.flatten(1)
    if not 1 <= top_k <= flat.shape[1]:
        raise ConfigError(f"top_k={top_k} must lie in [1, {flat.shape[1]}] (pixels per map)")
    if top_k == 1:
        return flat.amax(dim=1)
    return torch.topk(flat, top_k, dim=1).values.mean(dim=1)
