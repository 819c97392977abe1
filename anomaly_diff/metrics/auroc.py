"""Exact area under the ROC curve, accumulated in integers over the segments of a sweep."""

from anomaly_diff.metrics.curve import CurvePoints


class AUROCAccumulator:
    """Trapezoidal area under the ROC curve through every distinct threshold (as sklearn's ``roc_auc_score``).

    The trapezoid between consecutive points is ``dFP * (TP_prev + TP) / (2 P N)``; its numerator is an integer,
    summed exactly in int64 (at most ``2 P N`` < 2**63 for up to 3e9 samples), so the result is the exact rational
    number rounded once.

    Args:
        num_positives: ``P``, the number of positive samples; must be positive.
        num_negatives: ``N``, the number of negative samples; must be positive.
    """

    def __init__(self, num_positives: int, num_negatives: int) -> None:
        self.num_positives = num_positives
        self.num_negatives = num_negatives
        self._twice_area = 0

    def update(self, points: CurvePoints) -> None:
        """Add the trapezoids of one segment."""
        tp, fp = points.tp, points.fp
        self._twice_area += int(((fp[1:] - fp[:-1]) * (tp[1:] + tp[:-1])).sum())

    def compute(self) -> float:
        """Return the area in ``[0, 1]``."""
        return self._twice_area / (2 * self.num_positives * self.num_negatives)
