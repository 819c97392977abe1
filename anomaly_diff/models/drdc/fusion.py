"""DRDC's spatio-temporal fusion of the base heatmap with the refinement's correction heatmaps.

The paper fuses heatmaps "across timesteps, scales and inpainting configurations" with a weight ``gamma``; its
formula is not public. Here: :func:`aggregate_refinement` averages ``(B, K, n_t, S, H, W)`` over ``K``, ``S`` and
``n_t`` (or keeps the last timestep), and :func:`fuse` gives ``B * (1 + gamma * R)`` or ``B + gamma * R``, or one
part alone. Reasons and measurements: ``README.md`` of this package, ``experiments/results/drdc_ablation.md``.
"""

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from anomaly_diff.errors import ConfigError

TemporalFusion = Literal["mean", "last"]
FusionMode = Literal["multiplicative", "additive", "base", "refinement"]
FUSION_MODES = ("multiplicative", "additive", "base", "refinement")


@dataclass(frozen=True)
class FusionConfig:
    """How the base heatmap and the correction heatmaps become one map and one score per image.

    Attributes:
        temporal: ``"mean"`` over the timesteps, or ``"last"`` (the least noisy one).
        gamma: Weight of the refinement.
        mode: ``"multiplicative"`` ``B * (1 + gamma * R)``, ``"additive"`` ``B + gamma * R``, or one part alone:
            ``"base"`` (the refinement is not run) or ``"refinement"``.
        top_k: Pixels of the map averaged into the image score (1 = maximum; checked where the score is taken,
            :func:`~anomaly_diff.models.components.anomaly_map.image_score`).

    Raises:
        ConfigError: A value is out of range or unknown.
    """

    temporal: TemporalFusion = "mean"
    gamma: float = 16.0
    mode: FusionMode = "multiplicative"
    top_k: int = 1

    def __post_init__(self) -> None:
        if self.temporal not in ("mean", "last"):
            raise ConfigError(f"fusion.temporal={self.temporal!r} is unknown: use 'mean' or 'last'")
        if self.mode not in FUSION_MODES:
            raise ConfigError(f"fusion.mode={self.mode!r} is unknown: use one of {list(FUSION_MODES)}")
        if self.gamma < 0:
            raise ConfigError(f"fusion.gamma must be >= 0, got {self.gamma}")


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
        raise ConfigError(f"unknown temporal fusion {temporal!r}: use 'mean' or 'last'")
    return heatmaps.mean(dim=(1, 2, 3))


def fuse(base: Tensor, refinement: Tensor, gamma: float, mode: FusionMode = "multiplicative") -> Tensor:
    """Combine the base heatmap with the refinement map.

    Args:
        base: ``(B, H, W)`` non-negative base heatmap at the image resolution.
        refinement: ``(B, H, W)`` non-negative refinement map.
        gamma: Weight of the refinement, ``>= 0`` (:class:`FusionConfig` checks it).
        mode: ``"multiplicative"``: ``base * (1 + gamma * refinement)``; ``"additive"``: ``base + gamma * refinement``;
            ``"base"`` or ``"refinement"``: that map alone.

    Returns:
        ``(B, H, W)`` fused anomaly map.

    Raises:
        ValueError: The shapes differ, or ``mode`` is unknown.
    """
    if base.shape != refinement.shape:
        raise ValueError(f"base {tuple(base.shape)} and refinement {tuple(refinement.shape)} maps differ in shape")
    if mode == "multiplicative":
        return base * (1.0 + gamma * refinement)
    if mode == "additive":
        return base + gamma * refinement
    if mode == "base":
        return base
    if mode == "refinement":
        return refinement
    raise ConfigError(f"unknown fusion mode {mode!r}: use one of {list(FUSION_MODES)}")
