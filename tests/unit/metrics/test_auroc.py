import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from anomaly_diff.metrics.auroc import AUROCAccumulator
from anomaly_diff.metrics.curve import sweep
from tests.unit.metrics.metrics_reference import split_counts


@pytest.mark.parametrize(("pieces", "decimals"), [(1, 6), (5, 6), (5, 1)])
def test_auroc_over_segments_matches_sklearn(pieces, decimals):
    rng = np.random.default_rng(pieces + decimals)
    labels = rng.integers(0, 2, 500)
    scores = np.round(rng.random(500) + 0.3 * labels, decimals)
    accumulator = AUROCAccumulator(int(labels.sum()), int((labels == 0).sum()))
    sweep(split_counts(scores, labels, pieces=pieces), [accumulator])
    assert accumulator.compute() == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_auroc_of_a_perfect_reversed_and_tied_ranking():
    for scores, expected in (([0.1, 0.2, 0.8, 0.9], 1.0), ([0.9, 0.8, 0.2, 0.1], 0.0), ([0.5] * 4, 0.5)):
        accumulator = AUROCAccumulator(2, 2)
        sweep(split_counts(scores, [0, 0, 1, 1], pieces=1), [accumulator])
        assert accumulator.compute() == expected
