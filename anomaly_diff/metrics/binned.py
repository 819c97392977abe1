"""Binned pixel metrics: per-image histograms over a fixed score grid instead of every pixel's score.

Each image keeps ``16 * num_bins`` bytes (normal and anomalous pixel counts as int32, region overlaps as float64)
instead of 5 bytes per pixel, so memory grows with the number of images only.

Error: a pixel's score ``s`` is replaced by its bin ``floor((s - low) / width)`` (clamped into the grid, scores
outside ``score_range`` fall into the end bins), a non-decreasing map, so every binned metric equals the exact
metric of those quantised scores. The difference from the exact metric comes only from pixels of different
classes (or regions) that share a bin and so become ties; it vanishes as the bin width shrinks relative to the
spread of the scores. AUPRC is the most sensitive (ties at the top of the ranking merge precision steps); the
measured differences from exact at MVTec AD size are in ``experiments/results/bench_metrics.md`` ("Agreement").

torchmetrics' binned curves (``thresholds=int``) compare every score with every threshold (``O(N T)`` work per
update for more than 50,000 scores) and apply a sigmoid to scores outside ``[0, 1]``; a histogram is ``O(N)``.
"""

import torch
from torch import Tensor

from anomaly_diff.metrics.curve import ThresholdCounts
from anomaly_diff.metrics.regions import label_regions, overlap_weights


def bin_indices(scores: Tensor, num_bins: int, score_range: tuple[float, float]) -> Tensor:
    """Map scores onto ``num_bins`` equal bins over ``score_range``, clamping outside values to the end bins.

    Args:
        scores: Scores of any shape.
        num_bins: The number of bins.
        score_range: ``(low, high)``; bin ``i`` holds ``low + i * width <= s < low + (i + 1) * width``.

    Returns:
        int64 bin indices in ``[0, num_bins - 1]``, the same shape as ``scores``; non-decreasing in the score.
    """
    low, high = score_range
    scaled = (scores.double() - low) * (num_bins / (high - low))
    return scaled.floor().clamp_(0, num_bins - 1).long()


def image_histograms(
    anomaly_maps: Tensor, masks: Tensor, num_bins: int, score_range: tuple[float, float]
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Histogram each image's pixels over the grid, split by ground truth, with its region overlaps.

    Args:
        anomaly_maps: ``(B, H, W)`` float anomaly maps.
        masks: ``(B, H, W)`` ground truth in ``{0, 1}``.
        num_bins: The number of bins.
        score_range: ``(low, high)`` of the grid.

    Returns:
        ``(B, 2, num_bins)`` int32 counts of normal (index 0) and anomalous (index 1) pixels per bin;
        ``(B, num_bins)`` float64 sum of ``1 / |region|`` over each bin's anomalous pixels;
        ``(B,)`` int64 number of 8-connected regions of each mask;
        ``(B,)`` int64 number of pixels outside ``score_range`` (clamped into the end bins).
    """
    batch = anomaly_maps.shape[0]
    bins = bin_indices(anomaly_maps.reshape(batch, -1), num_bins, score_range)
    bins += torch.arange(batch, device=bins.device).unsqueeze(1) * num_bins
    positive = masks.reshape(batch, -1) > 0
    codes, sizes, next_code = [], [], 1
    for mask in masks:
        image_codes, image_sizes = label_regions(mask, first_code=next_code)
        codes.append(image_codes)
        sizes.append(image_sizes)
        next_code += len(image_sizes)
    weights = overlap_weights(torch.cat(sizes))[torch.cat(codes).long()]
    length = batch * num_bins
    counts = torch.stack(
        [torch.bincount(bins[~positive], minlength=length), torch.bincount(bins[positive], minlength=length)]
    )
    overlaps = torch.bincount(bins.reshape(-1), weights=weights, minlength=length)
    low, high = score_range
    outside = ((anomaly_maps < low) | (anomaly_maps > high)).reshape(batch, -1).sum(1)
    regions = torch.tensor([len(s) for s in sizes], dtype=torch.int64, device=anomaly_maps.device)
    return (
        counts.reshape(2, batch, num_bins).transpose(0, 1).to(torch.int32),
        overlaps.reshape(batch, num_bins),
        regions,
        outside,
    )


def binned_threshold_counts(counts: Tensor, overlaps: Tensor) -> ThresholdCounts:
    """Turn summed histograms into threshold counts, highest bin first, skipping empty bins.

    Args:
        counts: ``(2, num_bins)`` int64 normal and anomalous pixel counts per bin.
        overlaps: ``(num_bins,)`` float64 region overlaps per bin.

    Returns:
        The counts at each non-empty bin's lower edge as a threshold.
    """
    present = counts.sum(0) > 0
    return ThresholdCounts(
        positives=counts[1, present].flip(0), negatives=counts[0, present].flip(0), overlaps=overlaps[present].flip(0)
    )
