from types import SimpleNamespace

import numpy as np
import pytest
import torch

from anomaly_diff.callbacks import calibration
from anomaly_diff.callbacks.calibration import NormalCalibration
from anomaly_diff.models.base import CALIBRATION_BUFFERS


class ScoreModel(torch.nn.Module):
    """Stands in for an AnomalyModule: the score of an image is its mean pixel, its map the image's first channel."""

    def __init__(self, categories):
        super().__init__()
        self.categories = categories
        for name, shape in CALIBRATION_BUFFERS.items():
            self.register_buffer(name, torch.full((len(categories), *shape), float("nan")))

    def class_indices(self, names):
        return torch.tensor([self.categories.index(name) for name in names])

    def predict_anomaly(self, batch):
        return {"anomaly_map": batch["image"][:, 0], "pred_score": batch["image"].mean((1, 2, 3))}


def batch_of(values, categories, indices):
    images = torch.stack([torch.full((3, 2, 2), float(v)) for v in values])
    images[:, 0, 0, 0] -= 1  # the map's minimum: value - 1, maximum: value
    return {"image": images, "category": categories, "index": torch.tensor(indices)}


def fitting(epoch=0, sanity_checking=False, max_epochs=10, max_steps=-1, global_step=0):
    return SimpleNamespace(sanity_checking=sanity_checking, world_size=1, current_epoch=epoch, max_epochs=max_epochs,
                           max_steps=max_steps, global_step=global_step)


def run_epoch(callback, model, batches, trainer=None):
    trainer = trainer or fitting()
    callback.on_validation_epoch_start(trainer, model)
    for batch in batches:
        callback.on_validation_batch_end(trainer, model, model.predict_anomaly(batch), batch, 0)
    callback.on_validation_epoch_end(trainer, model)


def test_thresholds_and_colour_ranges_are_quantiles_of_the_validation_normals():
    model = ScoreModel(["a", "b", "c"])
    values = {"a": [1.0, 2.0, 3.0, 10.0], "b": [5.0, 6.0]}
    batches = [batch_of([1.0, 5.0, 2.0], ["a", "b", "a"], [0, 1, 2]),
               batch_of([3.0, 6.0, 10.0], ["a", "b", "a"], [3, 4, 5])]
    with pytest.warns(UserWarning, match=r"no validation images of categories \['c'\]"):
        run_epoch(NormalCalibration(quantile=0.9), model, batches)
    for index, category in enumerate(("a", "b")):
        scores = [v - 1 / 12 for v in values[category]]  # the mean of 11 pixels at v and one at v - 1
        assert model.score_thresholds[index].item() == pytest.approx(np.quantile(scores, 0.9))
        assert model.map_ranges[index].tolist() == pytest.approx([min(values[category]) - 1,
                                                                  np.quantile(values[category], 0.9)])
    assert model.score_thresholds[2].isnan() and model.map_ranges[2].isnan().all()


def test_a_new_validation_replaces_the_thresholds_and_the_sanity_check_is_ignored():
    model, callback = ScoreModel(["a"]), NormalCalibration(quantile=1.0)
    run_epoch(callback, model, [batch_of([4.0], ["a"], [0])])
    run_epoch(callback, model, [batch_of([9.0], ["a"], [0])], fitting(sanity_checking=True))
    assert model.score_thresholds.item() == pytest.approx(4.0 - 1 / 12)
    run_epoch(callback, model, [batch_of([2.0], ["a"], [0])])
    assert model.score_thresholds.item() == pytest.approx(2.0 - 1 / 12)


def test_rows_of_every_process_are_used_once(monkeypatch):
    # Two ranks: rank 1's rows arrive through the gather; index 1 is a padded duplicate seen by both.
    other_rank = {1: ("a", 7.0, 0.0, 7.0), 2: ("a", 8.0, 0.0, 8.0)}
    monkeypatch.setattr(calibration, "gather_objects", lambda trainer, local: [local, other_rank])
    model = ScoreModel(["a"])
    run_epoch(NormalCalibration(quantile=0.5), model, [batch_of([1.0, 7.0], ["a", "a"], [0, 1])])
    assert model.score_thresholds.item() == pytest.approx(7.0)  # the median of (1 - 1/12, 7, 8), not of four rows


@pytest.mark.parametrize(
    ("trainer", "calibrated"),
    [(fitting(epoch=1), False), (fitting(epoch=2), True), (fitting(epoch=9), True),  # every 3rd epoch and the last
     (fitting(epoch=4, max_epochs=None, max_steps=50, global_step=50), True), (fitting(epoch=3), False)],
)
def test_every_n_epochs_and_the_final_epoch_calibrate(trainer, calibrated):
    model = ScoreModel(["a"])
    run_epoch(NormalCalibration(quantile=1.0, every_n_epochs=3), model, [batch_of([4.0], ["a"], [0])], trainer)
    assert bool(model.score_thresholds.isfinite()) == calibrated


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"quantile": 0.0}, r"quantile=0.0 is out of range; it must be in \(0, 1\]"),
     ({"quantile": 1.5}, r"quantile=1.5 is out of range"),
     ({"every_n_epochs": 0}, r"every_n_epochs=0 is out of range; it must be >= 1")],
)
def test_out_of_range_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=f"calibration.{message}"):
        NormalCalibration(**kwargs)
