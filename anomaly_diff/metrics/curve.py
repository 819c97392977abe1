"""A threshold sweep fed segment by segment, so no curve of millions of points is ever held whole.

Every metric here is a function of the confusion counts at each distinct score threshold, highest threshold first
(the curve of sklearn's ``_binary_clf_curve``). The exact mode (:mod:`.exact`) produces those counts one chunk of
sorted scores at a time, the binned mode (:mod:`.binned`) from histograms; :func:`sweep` turns either into
cumulative curve points and hands each segment to streaming accumulators (:mod:`.auroc`,
:mod:`.average_precision`, :mod:`.f1_max`, :mod:`.aupro`). Memory stays bounded by one segment.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor


@dataclass(frozen=True)
class ThresholdCounts:
    """What the samples at consecutive distinct thresholds add to the curve, highest threshold first.

    Attributes:
        positives: ``(K,)`` int64 number of positive samples (pixels or images) whose score equals each threshold.
        negatives: ``(K,)`` int64 number of negative samples whose score equals each threshold.
        overlaps: ``(K,)`` float64 sum of ``1 / |region|`` over the positive pixels at each threshold (what the
            per-region overlap gains there), or ``None`` when no region metric is computed.
    """

    positives: Tensor
    negatives: Tensor
    overlaps: Tensor | None = None


@dataclass(frozen=True)
class CurvePoints:
    """Cumulative curve points of one segment, led by the last point of the previous segment.

    Index 0 is the point before the segment (all zero before the first segment), so ``x[1:] - x[:-1]`` are the
    segment's steps.

    Attributes:
        tp: ``(K + 1,)`` int64 true positives when predicting ``score >= threshold``.
        fp: ``(K + 1,)`` int64 false positives.
        overlap: ``(K + 1,)`` float64 sum over ground-truth regions of the fraction of the region detected, or
            ``None``.
    """

    tp: Tensor
    fp: Tensor
    overlap: Tensor | None = None


class CurveAccumulator(Protocol):
    """A metric accumulated over the segments of one sweep."""

    def update(self, points: CurvePoints) -> None:
        """Add one segment of the curve."""

    def compute(self) -> float:
        """Return the metric of the whole curve."""


def sweep(segments: Iterable[ThresholdCounts], accumulators: Sequence[CurveAccumulator]) -> None:
    """Walk the curve from the highest threshold down, feeding every accumulator each segment.

    Args:
        segments: Threshold counts in decreasing threshold order, segment after segment.
        accumulators: The metrics to update; each sees every segment once, in order.
    """
    tp = fp = None
    overlap = None
    for segment in segments:
        if tp is None:
            device = segment.positives.device
            tp = torch.zeros(1, dtype=torch.int64, device=device)
            fp = torch.zeros(1, dtype=torch.int64, device=device)
            overlap = torch.zeros(1, dtype=torch.float64, device=device)
        tp = torch.cat([tp[-1:], tp[-1] + segment.positives.cumsum(0)])
        fp = torch.cat([fp[-1:], fp[-1] + segment.negatives.cumsum(0)])
        if segment.overlaps is not None:
            overlap = torch.cat([overlap[-1:], overlap[-1] + segment.overlaps.cumsum(0)])
        points = CurvePoints(tp=tp, fp=fp, overlap=overlap if segment.overlaps is not None else None)
        for accumulator in accumulators:
            accumulator.update(points)
