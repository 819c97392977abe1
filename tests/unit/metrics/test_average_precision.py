import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from anomaly_diff.metrics.average_precision import AveragePrecisionAccumulator
from anomaly_diff.metrics.curve import sweep
from tests.unit.metrics.metrics_reference import split_counts


@pytest.mark.parametrize(("pieces", "decimals"), [(1, 6), (4, 6), (4, 1)])
def test_average_precision_over_segments_matches_sklearn(pieces, decimals):
    rng = np.random.default_rng(10 * pieces + decimals)
    labels = (rng.random(400) < 0.2).astype(int)
    scores = np.round(rng.random(400) + 0.4 * labels, decimals)
    accumulator = AveragePrecisionAccumulator(int(labels.sum()))
    sweep(split_counts(scores, labels, pieces=pieces), [accumulator])
    assert accumulator.compute() == pytest.approx(average_precision_score(labels, scores), abs=1e-12)


def test_average_precision_is_a_step_sum_not_a_trapezoid():
    # ranking: positive, negative, positive -> AP = 1/2 * 1 + 1/2 * 2/3; a trapezoid would give a different value
    accumulator = AveragePrecisionAccumulator(2)
    sweep(split_counts([0.9, 0.8, 0.7], [1, 0, 1], pieces=1), [accumulator])
    assert accumulator.compute() == pytest.approx(0.5 + 1 / 3, abs=1e-15)
