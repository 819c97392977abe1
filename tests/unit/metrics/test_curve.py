import numpy as np
import pytest
import torch

from anomaly_diff.metrics.curve import CurvePoints, ThresholdCounts, sweep
from tests.unit.metrics.metrics_reference import split_counts


class Recorder:
    def __init__(self):
        self.points = []

    def update(self, points: CurvePoints) -> None:
        self.points.append(points)

    def compute(self) -> float:
        return 0.0


def test_sweep_carries_the_last_point_into_the_next_segment():
    segments = [
        ThresholdCounts(torch.tensor([1, 0]), torch.tensor([0, 2]), torch.tensor([0.5, 0.0], dtype=torch.float64)),
        ThresholdCounts(torch.tensor([2]), torch.tensor([1]), torch.tensor([0.25], dtype=torch.float64)),
    ]
    recorder = Recorder()
    sweep(segments, [recorder])
    first, second = recorder.points
    assert first.tp.tolist() == [0, 1, 1] and first.fp.tolist() == [0, 0, 2] and first.overlap.tolist() == [0, 0.5, 0.5]
    assert second.tp.tolist() == [1, 3] and second.fp.tolist() == [2, 3] and second.overlap.tolist() == [0.5, 0.75]


def test_sweep_without_overlaps_gives_none():
    recorder = Recorder()
    sweep([ThresholdCounts(torch.tensor([1]), torch.tensor([1]))], [recorder])
    assert recorder.points[0].overlap is None


@pytest.mark.parametrize("pieces", [1, 2, 7])
def test_cumulative_points_equal_a_direct_count(pieces):
    rng = np.random.default_rng(pieces)
    scores, labels = np.round(rng.random(200), 2), rng.integers(0, 2, 200)
    recorder = Recorder()
    sweep(split_counts(scores, labels, pieces=pieces), [recorder])
    tp = np.concatenate([recorder.points[0].tp[:1].numpy()] + [p.tp[1:].numpy() for p in recorder.points])
    fp = np.concatenate([recorder.points[0].fp[:1].numpy()] + [p.fp[1:].numpy() for p in recorder.points])
    thresholds = np.unique(scores)[::-1]
    assert tp.tolist() == [0] + [int(((scores >= t) & (labels == 1)).sum()) for t in thresholds]
    assert fp.tolist() == [0] + [int(((scores >= t) & (labels == 0)).sum()) for t in thresholds]
