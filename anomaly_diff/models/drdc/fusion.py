"""DRDC's spatio-temporal fusion of the base heatmap with the refinement's correction heatmaps.

The paper fuses heatmaps "across timesteps, scales and inpainting configurations" with a weight ``gamma``; its
formula is not public. This project's choice (reasons and measurements in ``README.md`` of this package and
``experiments/results/drdc_ablation.md``):

1. :func:`aggregate_refinement`: the correction heatmaps ``(B, K, n_t, S, H, W)`` are averaged over
   configurations ``K`` and scales ``S`` (spatial), and over timesteps ``n_t`` (temporal: ``"mean"``), or only
   the last, least noisy timestep is kept (``"last"``).
2. :func:`fuse`: the base heatmap ``B`` (upsampled) is refined by the aggregated map ``R``, either
   multiplicatively, ``B * (1 + gamma * R)``, so ``R`` sharpens where the base model already sees an anomaly and
   is damped where it does not, or additively, ``B + gamma * R``. Both are invariant to a common rescaling of
   ``B`` up to ``gamma``; ``gamma = 0`` is the base model alone.
"""

from typing import Literal

from torch import Tensor

TemporalFusion = Literal["mean", "last"]
FusionMode = Literal["multiplicative", "additive"]


def aggregate_refinement(heatmaps: Tensor, temporal: TemporalFusion = "mean") -> Tensor:
    """Fuse correction heatmaps over configurations, timesteps and scales into one map per image.

    Args:
        heatmaps: ``(B, K, n_t, S, H, W)`` heatmaps per configuration, timestep (noisiest first) and scale.
        temporal: ``"mean"`` over all timesteps, or ``"last"`` (the final, least noisy one).

    Returns:
        ``(B, H, W)`` refinement map.

    Raises:
        ValueError: ``heatmaps`` is not 6-D or ``temporal`` is unknown.
    """
    if heatmaps.ndim != 6:
        raise ValueError(f"refinement heatmaps must be (B, K, n_t, S, H, W), got shape {tuple(heatmaps.shape)}")
    if temporal == "last":
        heatmaps = heatmaps[:, :, -1:]
    elif temporal != "mean":
        raise ValueError(f"unknown temporal fusion {temporal!r}: use 'mean' or 'last'")
    return heatmaps.mean(dim=(1, 2, 3))


def fuse(base: Tensor, refinement: Tensor, gamma: float, mode: FusionMode = "multiplicative") -> Tensor:
    """Combine the base heatmap with the refinement map.

    Args:
        base: ``(B, H, W)`` non-negative base heatmap at the image resolution.
        refinement: ``(B, H, W)`` non-negative refinement map.
        gamma: Weight of the refinement, ``>= 0``.
        mode: ``"multiplicative"``: ``base * (1 + gamma * refinement)``; ``"additive"``: ``base + gamma * refinement``.

    Returns:
        ``(B, H, W)`` fused anomaly map.

    Raises:
        ValueError: ``gamma`` is negative, the shapes differ, or ``mode`` is unknown.
    """
    if gamma < 0:
        raise ValueError(f"fusion gamma must be >= 0, got {gamma}")
    if base.shape != refinement.shape:
        raise ValueError(f"base {tuple(base.shape)} and refinement {tuple(refinement.shape)} maps differ in shape")
    if mode == "multiplicative":
        return base * (1.0 + gamma * refinement)
    if mode == "additive":
        return base + gamma * refinement
    raise ValueError(f"unknown fusion mode {mode!r}: use 'multiplicative' or 'additive'")
