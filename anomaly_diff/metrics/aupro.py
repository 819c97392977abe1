"""AUPRO: area under the per-region-overlap curve up to a false positive rate limit.

Bergmann et al., "The MVTec Anomaly Detection Dataset", IJCV 2021, Sec. 5.1: at each threshold the PRO is the mean
over ground-truth regions (8-connected components of each mask, per image) of the fraction of the region predicted
anomalous; the curve PRO(FPR) is integrated from FPR 0 to the limit (0.3) with the trapezoid rule, interpolating
linearly at the limit, and divided by the limit. The FPR axis is not rescaled by its maximum (a known source of
inflated figures). torchmetrics has no region metric, hence this accumulator.
"""

from anomaly_diff.errors import ConfigError
from anomaly_diff.metrics.curve import CurvePoints


class AUPROAccumulator:
    """Exact AUPRO through every distinct threshold, normalised to ``[0, 1]``.

    Args:
        num_negatives: ``N``, the number of normal pixels (the FPR denominator); must be positive.
        num_regions: ``R``, the number of ground-truth regions; must be positive.
        fpr_limit: The upper end of the integration, in ``(0, 1]``. Defaults to 0.3.
    """

    def __init__(self, num_negatives: int, num_regions: int, fpr_limit: float = 0.3) -> None:
        if not 0.0 < fpr_limit <= 1.0:
            raise ConfigError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
        self.num_negatives = num_negatives
        self.num_regions = num_regions
        self.fpr_limit = fpr_limit
        self._area = 0.0
        self._done = False

    def update(self, points: CurvePoints) -> None:
        """Add the trapezoids of one segment that lie below the FPR limit, and the interpolated last one."""
        if self._done:
            return
        if points.overlap is None:
            raise ValueError("AUPRO needs region overlaps: the sweep was given threshold counts without `overlaps`")
        fpr = points.fp.double() / self.num_negatives
        pro = points.overlap / self.num_regions
        inside = fpr[1:] <= self.fpr_limit  # a prefix, since the FPR only grows
        steps = int(inside.sum())
        self._area += float(((fpr[1 : steps + 1] - fpr[:steps]) * (pro[1 : steps + 1] + pro[:steps]) / 2).sum())
        if steps < len(inside):
            x0, x1, y0, y1 = (float(v) for v in (fpr[steps], fpr[steps + 1], pro[steps], pro[steps + 1]))
            y_limit = y0 + (y1 - y0) * (self.fpr_limit - x0) / (x1 - x0)
            self._area += (self.fpr_limit - x0) * (y0 + y_limit) / 2
            self._done = True

    def compute(self) -> float:
        """Return the normalised area in ``[0, 1]``."""
        return self._area / self.fpr_limit
