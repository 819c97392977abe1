"""Average precision (AUPRC as a step sum), accumulated over the segments of a sweep."""

from anomaly_diff.metrics.curve import CurvePoints


class AveragePrecisionAccumulator:
    """Average precision ``AP = sum_k (R_k - R_{k-1}) P_k`` over the distinct thresholds.

    This is the step sum of sklearn's ``average_precision_score`` (and torchmetrics' ``AveragePrecision``), not a
    trapezoid under the precision-recall curve, which is larger on a steep curve.

    Args:
        num_positives: ``P``, the number of positive samples; must be positive.
    """

    def __init__(self, num_positives: int) -> None:
        self.num_positives = num_positives
        self._sum = 0.0

    def update(self, points: CurvePoints) -> None:
        """Add ``dTP_k * precision_k`` of one segment (divided by ``P`` at the end)."""
        tp, fp = points.tp[1:].double(), points.fp[1:].double()
        self._sum += float(((tp - points.tp[:-1].double()) * tp / (tp + fp)).sum())

    def compute(self) -> float:
        """Return the average precision in ``[0, 1]``."""
        return self._sum / self.num_positives
