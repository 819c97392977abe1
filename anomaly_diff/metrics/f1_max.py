"""F1max: the best F1 score over all thresholds, accumulated over the segments of a sweep.

torchmetrics has F1 at one threshold and precision-recall curves, not their maximum, hence this accumulator.
"""

from anomaly_diff.metrics.curve import CurvePoints


class F1MaxAccumulator:
    """Maximum over the distinct thresholds of ``F1 = 2 TP / (2 TP + FP + FN) = 2 TP / (TP + FP + P)``.

    Args:
        num_positives: ``P``, the number of positive samples; must be positive.
    """

    def __init__(self, num_positives: int) -> None:
        self.num_positives = num_positives
        self._max = 0.0

    def update(self, points: CurvePoints) -> None:
        """Take the best F1 of one segment."""
        tp, fp = points.tp[1:].double(), points.fp[1:].double()
        self._max = max(self._max, float((2 * tp / (tp + fp + self.num_positives)).max()))

    def compute(self) -> float:
        """Return F1max in ``[0, 1]``."""
        return self._max
