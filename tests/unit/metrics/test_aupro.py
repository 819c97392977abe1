import numpy as np
import pytest
from skimage.measure import label

from anomaly_diff.metrics.aupro import AUPROAccumulator
from anomaly_diff.metrics.curve import CurvePoints, sweep
from tests.unit.metrics.metrics_reference import random_case, slow_aupro, split_counts


def region_weights(masks):
    """Per-pixel 1 / |region| with skimage labelling, and the region count."""
    weights, count = np.zeros(masks.shape), 0
    for i, mask in enumerate(masks):
        labelled = label(mask > 0, connectivity=2)
        for r in range(1, labelled.max() + 1):
            weights[i][labelled == r] = 1.0 / (labelled == r).sum()
        count += labelled.max()
    return weights, count


@pytest.mark.parametrize("limit", [0.3, 0.05, 1.0])
@pytest.mark.parametrize(("pieces", "ties"), [(1, False), (5, False), (5, True)])
def test_aupro_over_segments_matches_a_slow_all_threshold_loop(limit, pieces, ties):
    maps, masks, _, _, _ = random_case(seed=pieces, categories=("a",), per_category=4, ties=ties)
    weights, regions = region_weights(masks)
    accumulator = AUPROAccumulator(int((masks == 0).sum()), regions, limit)
    sweep(split_counts(maps.ravel(), masks.ravel(), weights.ravel(), pieces=pieces), [accumulator])
    assert accumulator.compute() == pytest.approx(slow_aupro(maps, masks, limit), abs=1e-12)


def test_regions_count_equally_whatever_their_size():
    # a 1-pixel region found at the top threshold and a 9-pixel region never above any normal pixel
    maps = np.zeros((1, 6, 6))
    masks = np.zeros((1, 6, 6))
    masks[0, 0, 0] = 1
    maps[0, 0, 0] = 1.0
    masks[0, 3:6, 3:6] = 1
    maps[0] += np.where(masks[0] == 0, 0.5, 0) * (np.arange(36).reshape(6, 6) % 2 == 0)
    weights, regions = region_weights(masks)
    accumulator = AUPROAccumulator(int((masks == 0).sum()), regions, 0.3)
    sweep(split_counts(maps.ravel(), masks.ravel(), weights.ravel(), pieces=1), [accumulator])
    # PRO = 1/2 from FPR 0 up to FPR 14/26 > 0.3 (the big region is only found at threshold 0): AUPRO = 0.5
    assert accumulator.compute() == pytest.approx(0.5, abs=1e-15)
    assert slow_aupro(maps, masks) == pytest.approx(0.5, abs=1e-15)


def test_aupro_needs_overlaps_and_a_valid_limit():
    with pytest.raises(ValueError, match=r"fpr_limit must be in \(0, 1\]"):
        AUPROAccumulator(10, 1, fpr_limit=1.5)
    points = CurvePoints(tp=np.zeros(2), fp=np.zeros(2), overlap=None)
    with pytest.raises(ValueError, match="needs region overlaps"):
        AUPROAccumulator(10, 1).update(points)
