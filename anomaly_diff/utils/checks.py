"""Argument checks that several configurable classes share, each written once with its one message."""

from collections.abc import Sequence

from anomaly_diff.errors import ConfigError


def check_norm_groups(key: str, norm_num_groups: int, channels: Sequence[int], what: str) -> None:
    """Raise unless ``norm_num_groups`` divides every channel count (torch's GroupNorm names neither).

    Args:
        key: The configuration key, for the message (e.g. ``"model.norm_num_groups"``).
        norm_num_groups: The groups of the group norms.
        channels: The channel counts they normalise.
        what: What ``channels`` are, for the message (e.g. ``"block_out_channels"``).

    Raises:
        ConfigError: A channel count is not a multiple of ``norm_num_groups``.
    """
    bad = [count for count in channels if count % norm_num_groups]
    if bad:
        raise ConfigError(f"{key}={norm_num_groups} must divide every {what}, not {bad}")


def check_ema_decay(ema_decay: float | None) -> None:
    """Raise unless ``model.ema_decay`` is ``None`` (no average) or lies in ``(0, 1)``.

    Raises:
        ConfigError: ``ema_decay`` is out of range.
    """
    if ema_decay is not None and not 0 < ema_decay < 1:
        raise ConfigError(f"model.ema_decay must lie in (0, 1) or be null, got {ema_decay}")
