import csv
from types import SimpleNamespace

import pytest
import torch

from anomaly_diff.callbacks.predictions import PredictionWriter
from anomaly_diff.data.samples import UNKNOWN_CATEGORY
from tests.unit.callbacks.test_calibration import ScoreModel


class CategoryModel(ScoreModel):
    """ScoreModel with AnomalyModule's category methods: an image of unknown category is predicted to be the last."""

    def category_sources(self, batch):
        return ["predicted" if name == UNKNOWN_CATEGORY else "given" for name in batch["category"]]

    def batch_categories(self, batch):
        return [self.categories[-1] if name == UNKNOWN_CATEGORY else name for name in batch["category"]]


def predict(writer, model, tmp_path, scores, categories=("a", "b")):
    trainer = SimpleNamespace(world_size=1, is_global_zero=True, loggers=[], default_root_dir=str(tmp_path))
    batch = {"image": torch.rand(len(scores), 3, 4, 4), "mask": torch.zeros(len(scores), 4, 4),
             "category": list(categories[: len(scores)]),
             "path": [f"/in/{i}.png" for i in range(len(scores))], "index": torch.arange(len(scores))}
    prediction = {"anomaly_map": torch.rand(len(scores), 4, 4), "pred_score": torch.tensor(scores)}
    writer.on_predict_start(trainer, model)
    writer.write_on_batch_end(trainer, model, prediction, None, batch, 0)
    writer.on_predict_epoch_end(trainer, model)
    return list(csv.DictReader((tmp_path / "predictions.csv").open()))


def test_uncalibrated_categories_get_no_decision_and_a_warning(tmp_path):
    model = CategoryModel(["a", "b"])
    model.score_thresholds[0] = 0.5
    with pytest.warns(UserWarning, match=r"no decision threshold for categories \['b'\].*--predictions.threshold"):
        rows = predict(PredictionWriter(), model, tmp_path, [0.7, 0.9])
    assert [(r["category"], r["threshold"], r["anomalous"]) for r in rows] == [("a", "0.5", "True"), ("b", "", "")]
    assert all((tmp_path / r["overlay"]).is_file() for r in rows)  # overlays even without a colour range


def test_a_given_threshold_decides_every_category_and_equal_is_normal(tmp_path):
    rows = predict(PredictionWriter(threshold=0.75), CategoryModel(["a", "b"]), tmp_path, [0.75, 0.875])
    assert [(r["threshold"], r["anomalous"]) for r in rows] == [("0.75", "False"), ("0.75", "True")]


def test_an_image_of_unknown_category_is_written_with_the_models_category_and_its_threshold(tmp_path):
    model = CategoryModel(["a", "b"])
    model.score_thresholds[:] = torch.tensor([0.5, 0.75])
    rows = predict(PredictionWriter(), model, tmp_path, [0.7, 0.7], categories=("a", UNKNOWN_CATEGORY))
    assert [(r["category"], r["category_source"], r["threshold"], r["anomalous"]) for r in rows] == [
        ("a", "given", "0.5", "True"), ("b", "predicted", "0.75", "False")]
    assert [r["overlay"].split("/")[1] for r in rows] == ["a", "b"] and all((tmp_path / r["overlay"]).is_file()
                                                                          for r in rows)
