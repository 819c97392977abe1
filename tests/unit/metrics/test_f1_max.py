import numpy as np
import pytest

from anomaly_diff.metrics.curve import sweep
from anomaly_diff.metrics.f1_max import F1MaxAccumulator
from tests.unit.metrics.metrics_reference import f1_max, split_counts


@pytest.mark.parametrize(("pieces", "decimals"), [(1, 6), (6, 6), (6, 1)])
def test_f1_max_over_segments_matches_sklearn_curve(pieces, decimals):
    rng = np.random.default_rng(pieces * decimals)
    labels = (rng.random(300) < 0.3).astype(int)
    scores = np.round(rng.random(300) + 0.5 * labels, decimals)
    accumulator = F1MaxAccumulator(int(labels.sum()))
    sweep(split_counts(scores, labels, pieces=pieces), [accumulator])
    assert accumulator.compute() == pytest.approx(f1_max(labels, scores), abs=1e-12)


def test_f1_max_of_a_known_ranking():
    # keeping the top two (a miss, then the hit): P = 1/2, R = 1 -> 2/3; all three: P = 1/3 -> 1/2; the top one: 0
    accumulator = F1MaxAccumulator(1)
    sweep(split_counts([0.9, 0.8, 0.1], [0, 1, 0], pieces=1), [accumulator])
    assert accumulator.compute() == pytest.approx(2 / 3, abs=1e-15)
