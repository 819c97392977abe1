"""Exact threshold counts of millions of scores, sorted chunk by chunk so memory stays bounded.

Scores become ordered int32 keys (the float32 bit pattern, negative values' magnitude bits flipped: same order, same
ties), since PyTorch sorts int32 on the CPU several times faster than float32. Above ``chunk_size`` scores, a
histogram of the top 20 key bits splits the key range into chunks of at most ``chunk_size``, sorted one after the
other from the highest down; a 20-bit bin holding more (a constant map) has at most 4096 distinct values and is
counted with ``bincount``. Peak memory is thus proportional to ``chunk_size``, whatever the number of scores
(``experiments/results/bench_metrics.md``).
"""

from collections.abc import Iterator

import torch
from torch import Tensor

from anomaly_diff.errors import ConfigError
from anomaly_diff.metrics.curve import ThresholdCounts

_LOW_BITS = 12  # key bits below the coarse histogram; one coarse bin holds 2**12 distinct float32 values
_COARSE_OFFSET = 1 << (31 - _LOW_BITS)  # shifts the signed coarse index (key >> 12) to 0 .. 2**20 - 1
_NUM_COARSE = 1 << (32 - _LOW_BITS)
_MIN_SLICE = 1 << 20  # scores scanned at once when selecting a chunk (8 MB of temporaries), at least chunk_size


def ordered_keys(scores: Tensor) -> Tensor:
    """Map float scores to int32 keys with the same order and the same ties.

    Args:
        scores: Finite scores of any shape; cast to float32.

    Returns:
        int32 keys of the same shape: ``a < b`` exactly when ``key(a) < key(b)`` and ``a == b`` when the keys are
        equal (``-0.0`` and ``0.0`` share a key).
    """
    return floats_to_keys_(scores.to(torch.float32, copy=True))


def floats_to_keys_(values: Tensor) -> Tensor:
    """In-place :func:`ordered_keys` of a float32 tensor, slice by slice; returns its int32 view.

    Args:
        values: A contiguous float32 tensor, overwritten.

    Returns:
        ``values``' memory viewed as the int32 keys.
    """
    keys = values.view(torch.int32)
    for part, bits in zip(values.view(-1).split(_MIN_SLICE), keys.view(-1).split(_MIN_SLICE), strict=True):
        part.add_(0.0)  # turns -0.0 into 0.0
        bits.bitwise_xor_((bits >> 31).bitwise_and_(0x7FFFFFFF))
    return keys


def exact_threshold_counts(
    keys: Tensor, codes: Tensor, overlap_weights: Tensor | None = None, chunk_size: int = 1 << 22
) -> Iterator[ThresholdCounts]:
    """Yield the counts at every distinct score, highest first, one sorted chunk at a time.

    Args:
        keys: ``(N,)`` int32 keys from :func:`ordered_keys`.
        codes: ``(N,)`` integer codes: 0 for a negative sample, ``c >= 1`` for a positive one (the region number
            when ``overlap_weights`` is given).
        overlap_weights: ``(R + 1,)`` float64, the overlap a positive pixel of region ``c`` adds
            (``1 / |region c|``), with ``overlap_weights[0] == 0``; ``None`` to skip region overlaps.
        chunk_size: The most scores sorted at once. Defaults to ``2**22``.

    Yields:
        :class:`ThresholdCounts` of consecutive distinct scores, in decreasing order over all chunks.
    """
    if chunk_size < 1:
        raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}")
    if keys.numel() <= chunk_size:
        yield _sorted_counts(keys, codes, overlap_weights)
        return
    scan = max(chunk_size, _MIN_SLICE)
    for low, high, oversized in _plan_chunks(keys, scan, chunk_size):
        if oversized:
            yield _single_bin_counts(keys, codes, overlap_weights, low, scan)
        else:
            chunk_keys, chunk_codes = [], []
            for k, c in zip(keys.split(scan), codes.split(scan), strict=True):
                inside = (k >= low) & (k <= high)
                chunk_keys.append(k[inside])
                chunk_codes.append(c[inside])
            yield _sorted_counts(torch.cat(chunk_keys), torch.cat(chunk_codes), overlap_weights)


def _plan_chunks(keys: Tensor, scan: int, chunk_size: int) -> Iterator[tuple[int, int, bool]]:
    """Split the key range into chunks of at most ``chunk_size`` keys, highest first.

    Yields:
        ``(low_key, high_key, oversized)``; ``oversized`` marks a single coarse bin holding more keys than that.
    """
    histogram = torch.zeros(_NUM_COARSE, dtype=torch.int64, device=keys.device)
    for part in keys.split(scan):
        histogram += torch.bincount((part >> _LOW_BITS).long() + _COARSE_OFFSET, minlength=_NUM_COARSE)
    bins = histogram.nonzero().squeeze(1).flip(0)
    ends = histogram[bins].cumsum(0)
    start, done = 0, 0
    while start < len(bins):
        stop = int(torch.searchsorted(ends, done + chunk_size, right=True)) - 1
        oversized = stop < start
        stop = max(stop, start)
        high_bin, low_bin = int(bins[start]) - _COARSE_OFFSET, int(bins[stop]) - _COARSE_OFFSET
        yield low_bin << _LOW_BITS, (high_bin << _LOW_BITS) | ((1 << _LOW_BITS) - 1), oversized
        done, start = int(ends[stop]), stop + 1


def _sorted_counts(keys: Tensor, codes: Tensor, overlap_weights: Tensor | None) -> ThresholdCounts:
    """Group one chunk by distinct key with a sort (ascending, the fast int32 path)."""
    sorted_keys, order = torch.sort(keys)
    starts = torch.ones_like(sorted_keys, dtype=torch.bool)
    starts[1:] = sorted_keys[1:] != sorted_keys[:-1]
    group = starts.cumsum(0) - 1
    return _descending(*_group_sums(group, codes[order], overlap_weights, int(group[-1]) + 1))


def _single_bin_counts(
    keys: Tensor, codes: Tensor, overlap_weights: Tensor | None, low: int, scan: int
) -> ThresholdCounts:
    """Count one coarse bin (at most 4096 distinct keys) by key offset, streaming over the scores."""
    width = 1 << _LOW_BITS
    positives = torch.zeros(width, dtype=torch.int64, device=keys.device)
    negatives = torch.zeros_like(positives)
    overlaps = None if overlap_weights is None else torch.zeros(width, dtype=torch.float64, device=keys.device)
    for k, c in zip(keys.split(scan), codes.split(scan), strict=True):
        inside = (k >= low) & (k <= low + width - 1)
        part_positives, part_negatives, part_overlaps = _group_sums(
            (k[inside] - low).long(), c[inside], overlap_weights, width
        )
        positives += part_positives
        negatives += part_negatives
        if overlaps is not None:
            overlaps += part_overlaps
    present = (positives + negatives) > 0
    return _descending(positives[present], negatives[present], None if overlaps is None else overlaps[present])


def _group_sums(
    group: Tensor, codes: Tensor, overlap_weights: Tensor | None, groups: int
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Sum positives, negatives and overlaps per group index ``0 .. groups - 1``."""
    positive = codes > 0
    positives = torch.bincount(group[positive], minlength=groups)
    negatives = torch.bincount(group[~positive], minlength=groups)
    overlaps = None
    if overlap_weights is not None:
        overlaps = torch.bincount(group, weights=overlap_weights[codes], minlength=groups)
    return positives, negatives, overlaps


def _descending(positives: Tensor, negatives: Tensor, overlaps: Tensor | None) -> ThresholdCounts:
    """Package per-threshold sums given in ascending score order as highest first."""
    flipped = None if overlaps is None else overlaps.flip(0)
    return ThresholdCounts(positives=positives.flip(0), negatives=negatives.flip(0), overlaps=flipped)
