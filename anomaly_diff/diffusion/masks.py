"""Random patch masks and patch-shuffled noise on latent grids (DeCo-Diff's training corruption).

Batched per sample (the only loop is over a batch's distinct patch sizes); randomness from torch's global generator.
"""

from collections.abc import Sequence
from typing import NamedTuple

import torch
from einops import rearrange
from torch import Tensor

from anomaly_diff.errors import ConfigError


def check_patch_sizes(sizes: Sequence[int], probs: Sequence[float], height: int, width: int) -> None:
    """Validate a patch-size distribution against a latent grid.

    Args:
        sizes: Candidate patch sizes in latent cells.
        probs: Their probabilities (same length, non-negative, summing to 1).
        height: Latent height in cells.
        width: Latent width in cells.

    Raises:
        ValueError: The lengths differ, a probability is negative, they do not sum to 1, or a size does not
            divide the latent grid.
    """
    if len(sizes) != len(probs) or not sizes:
        raise ConfigError(
            f"patch_sizes {list(sizes)} and patch_size_probs {list(probs)} must be non-empty and equally long"
        )
    if any(p < 0 for p in probs) or abs(sum(probs) - 1.0) > 1e-6:
        raise ConfigError(f"patch_size_probs {list(probs)} must be non-negative and sum to 1 (sum = {sum(probs)})")
    bad = [s for s in sizes if s < 1 or height % s or width % s]
    if bad:
        raise ConfigError(
            f"patch_sizes {bad} do not divide the {height}x{width} latent grid; use sizes that divide both sides "
            f"(latent = image size / 8)"
        )


def sample_patch_sizes(
    batch_size: int, sizes: Sequence[int], probs: Sequence[float], device: torch.device | str | None = None
) -> Tensor:
    """Draw one patch size per sample from a categorical distribution.

    Args:
        batch_size: Number of samples B.
        sizes: Candidate patch sizes.
        probs: Their probabilities.
        device: Where the result lives.

    Returns:
        ``(B,)`` int64 patch sizes.
    """
    weights = torch.as_tensor(probs, dtype=torch.float, device=device)
    choice = torch.multinomial(weights, batch_size, replacement=True)
    return torch.as_tensor(sizes, dtype=torch.long, device=device)[choice]


def _patch_grid_mask(count: int, height: int, width: int, size: int, ratios: Tensor) -> Tensor:
    """Select ``n - floor(n * (1 - ratio))`` of the ``n`` patches of each sample (the reference's rounding).

    Returns:
        ``(count, 1, height, width)`` bool, True on the selected patches.
    """
    rows, cols = height // size, width // size
    n = rows * cols
    ranks = torch.rand(count, n, device=ratios.device).argsort(dim=1).argsort(dim=1)
    selected_count = n - torch.floor(n * (1.0 - ratios)).long()
    selected = ranks < selected_count[:, None]
    selected = selected.reshape(count, 1, rows, cols)
    return selected.repeat_interleave(size, dim=2).repeat_interleave(size, dim=3)


def random_patch_mask(height: int, width: int, patch_sizes: Tensor, ratios: Tensor) -> Tensor:
    """Mark a random fraction of square patches per sample.

    Sample ``b`` is tiled into ``patch_sizes[b]``-sized squares, and ``n - floor(n * (1 - ratios[b]))`` of
    its ``n`` squares, chosen uniformly without replacement, are marked (the count rule of the DeCo-Diff
    reference, so a ratio of 0 marks nothing and the marked fraction is ``ratio`` up to one patch).

    Args:
        height: Grid height H.
        width: Grid width W.
        patch_sizes: ``(B,)`` int64 patch side per sample; each must divide ``H`` and ``W``.
        ratios: ``(B,)`` float fraction of patches to mark, in ``[0, 1]``.

    Returns:
        ``(B, 1, H, W)`` float32, 1 on marked cells and 0 elsewhere.
    """
    mask = torch.zeros(patch_sizes.shape[0], 1, height, width, dtype=torch.bool, device=patch_sizes.device)
    for size in patch_sizes.unique().tolist():
        rows = (patch_sizes == size).nonzero(as_tuple=True)[0]
        mask[rows] = _patch_grid_mask(rows.numel(), height, width, int(size), ratios[rows])
    return mask.float()


def shuffle_patches(x: Tensor, patch_sizes: Tensor) -> Tensor:
    """Rebuild each sample from patches drawn, without replacement, from the whole batch.

    For every distinct patch size ``s``, all ``B * (H/s) * (W/s)`` patches of the batch are permuted; the
    samples whose patch size is ``s`` take their patches from that permutation. The result keeps the latent
    statistics but breaks the spatial structure (a class-agnostic stand-in for anomalies, DeCo-Diff Sec. 3).

    Args:
        x: ``(B, C, H, W)`` tensor.
        patch_sizes: ``(B,)`` int64 patch side per sample; each must divide ``H`` and ``W``.

    Returns:
        ``(B, C, H, W)`` shuffled tensor.
    """
    out = torch.empty_like(x)
    height, width = x.shape[-2:]
    for size in patch_sizes.unique().tolist():
        rows = (patch_sizes == size).nonzero(as_tuple=True)[0]
        patches = rearrange(x, "b c (h p) (w q) -> (b h w) c p q", p=size, q=size)
        patches = patches[torch.randperm(patches.shape[0], device=x.device)]
        shuffled = rearrange(patches, "(b h w) c p q -> b c (h p) (w q)", b=x.shape[0], h=height // size)
        out[rows] = shuffled[rows]
    return out


def shuffled_patch_noise(x: Tensor, patch_sizes: Tensor, max_shuffle_ratio: float = 0.3) -> Tensor:
    """DeCo-Diff's training noise: Gaussian, except on a random fraction of patches that hold shuffled latents.

    Per sample, a fraction ``U(0, max_shuffle_ratio)`` of its patches (same patch size as its corruption
    mask) takes the values of :func:`shuffle_patches`; the rest is standard Gaussian noise.

    Args:
        x: ``(B, C, H, W)`` clean latents.
        patch_sizes: ``(B,)`` int64 patch side per sample.
        max_shuffle_ratio: Upper bound of the shuffled fraction. Defaults to ``0.3`` (DeCo-Diff).

    Returns:
        ``(B, C, H, W)`` noise ``e``.
    """
    ratios = torch.rand(x.shape[0], device=x.device) * max_shuffle_ratio
    shuffled = random_patch_mask(x.shape[-2], x.shape[-1], patch_sizes, ratios).bool()
    return torch.where(shuffled, shuffle_patches(x, patch_sizes), torch.randn_like(x))


class PatchCorruption(NamedTuple):
    """One draw of DeCo-Diff's training corruption.

    Attributes:
        keep: ``(B, 1, H, W)`` mask ``M``, 1 on clean cells, 0 on corrupted ones.
        noise: ``(B, C, H, W)`` noise ``e`` (Gaussian mixed with shuffled latent patches).
        patch_sizes: ``(B,)`` the patch side drawn for each sample.
    """

    keep: Tensor
    noise: Tensor
    patch_sizes: Tensor


def sample_patch_corruption(
    x0: Tensor,
    patch_sizes: Sequence[int] = (1, 2, 4, 8, 16),
    patch_size_probs: Sequence[float] = (0.3, 0.25, 0.2, 0.15, 0.1),
    max_mask_ratio: float = 0.7,
    max_shuffle_ratio: float = 0.3,
) -> PatchCorruption:
    """Draw DeCo-Diff's training corruption for a batch of latents (defaults: the paper's values).

    Per sample: a patch size from ``patch_sizes`` with ``patch_size_probs``; a corrupted fraction
    ``U(0, max_mask_ratio)`` of its patches (``keep = 0`` there); and the noise of
    :func:`shuffled_patch_noise` with the same patch size.

    Args:
        x0: ``(B, C, H, W)`` clean latents.
        patch_sizes: Candidate patch sides in latent cells; each must divide ``H`` and ``W``.
        patch_size_probs: Their probabilities.
        max_mask_ratio: Upper bound of the corrupted fraction.
        max_shuffle_ratio: Upper bound of the fraction of noise patches that hold shuffled latents.

    Returns:
        The mask, the noise and the drawn patch sizes.
    """
    height, width = x0.shape[-2:]
    check_patch_sizes(patch_sizes, patch_size_probs, height, width)
    sizes = sample_patch_sizes(x0.shape[0], patch_sizes, patch_size_probs, device=x0.device)
    ratios = torch.rand(x0.shape[0], device=x0.device) * max_mask_ratio
    keep = 1.0 - random_patch_mask(height, width, sizes, ratios)
    return PatchCorruption(keep=keep, noise=shuffled_patch_noise(x0, sizes, max_shuffle_ratio), patch_sizes=sizes)
