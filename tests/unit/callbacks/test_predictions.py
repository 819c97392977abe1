import csv

import cv2
import numpy as np
import pytest
import torch

from anomaly_diff.callbacks.predictions import COLUMNS, PredictionWriter
from anomaly_diff.data import MVTecAD
from anomaly_diff.data.samples import UNKNOWN_CATEGORY
from tests.helpers.trainers import bare_trainer
from tests.unit.callbacks.test_calibration import ScoreModel


class CategoryModel(ScoreModel):
    """ScoreModel with AnomalyModule's category methods: an image of unknown category is predicted to be the last."""

    def category_sources(self, batch):
        return ["predicted" if name == UNKNOWN_CATEGORY else "given" for name in batch["category"]]

    def batch_categories(self, batch):
        return [self.categories[-1] if name == UNKNOWN_CATEGORY else name for name in batch["category"]]


def predict(writer, model, tmp_path, scores, categories=("a", "b")):
    trainer = bare_trainer(tmp_path)
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


def predict_batches(writer, model, tmp_path, batches):
    """Run the writer over ``batches`` (lists of ``(path, index, score)``); the CSV text and the writer's state sizes.

    The sizes (``len`` of each container among the writer's attributes) are taken after the last batch, before the
    CSV is written: what the writer holds per image predicted.
    """
    trainer = bare_trainer(tmp_path)
    writer.on_predict_start(trainer, model)
    for batch_idx, rows in enumerate(batches):
        paths, indices, scores = zip(*rows, strict=True)
        batch = {"image": torch.rand(len(rows), 3, 4, 4), "mask": torch.zeros(len(rows), 4, 4),
                 "category": ["a"] * len(rows), "path": list(paths), "index": torch.tensor(indices)}
        prediction = {"anomaly_map": torch.rand(len(rows), 4, 4), "pred_score": torch.tensor(scores)}
        writer.write_on_batch_end(trainer, model, prediction, None, batch, batch_idx)
    sizes = {name: len(value) for name, value in vars(writer).items() if isinstance(value, (list, dict, set, tuple))}
    writer.on_predict_epoch_end(trainer, model)
    return (tmp_path / "predictions.csv").read_text(), sizes


def test_the_writer_keeps_no_row_per_image(tmp_path):
    # It kept every CSV row in a dict until the end of predict: memory in proportion to the images (issue 20).
    model = CategoryModel(["a"])
    model.score_thresholds[0] = 0.5
    texts, sizes = [], []
    for n_batches in (2, 20):
        batches = [[(f"/in/{b:03d}_{i}.png", 2 * b + i, 0.25 + 0.5 * i) for i in range(2)] for b in range(n_batches)]
        text, size = predict_batches(PredictionWriter(), model, tmp_path / str(n_batches), batches)
        texts.append(text)
        sizes.append(size)
    assert sizes[0] == sizes[1]
    lines = texts[1].splitlines()
    assert lines[0] == ",".join(COLUMNS) and len(lines) == 41 and lines[1:3] == [
        "/in/000_0.png,a,given,0.25,0.5,False,,,predictions/a/000000_000_0.png,",
        "/in/000_1.png,a,given,0.75,0.5,True,,,predictions/a/000001_000_1.png,"]  # uncalibrated ranges: empty
    assert texts[1].startswith(texts[0].rsplit("\n", 2)[0])  # the same rows, in the same order


def test_rows_out_of_path_order_are_sorted_and_an_image_seen_twice_is_written_once(tmp_path):
    # As under DDP, where a distributed sampler pads with duplicates; a flat folder comes in path order.
    model = CategoryModel(["a"])
    model.score_thresholds[0] = 0.5
    in_order = [[("/in/1.png", 1, 0.5), ("/in/2.png", 2, 0.25)], [("/in/3.png", 3, 0.75)]]
    shuffled = [[("/in/3.png", 3, 0.75), ("/in/1.png", 1, 0.5)], [("/in/2.png", 2, 0.25), ("/in/3.png", 3, 0.75)]]
    expected, _ = predict_batches(PredictionWriter(), model, tmp_path / "in_order", in_order)
    text, _ = predict_batches(PredictionWriter(), model, tmp_path / "shuffled", shuffled)
    assert text == expected and len(text.splitlines()) == 4
    assert [row["path"] for row in csv.DictReader(text.splitlines())] == ["/in/1.png", "/in/2.png", "/in/3.png"]


def test_nothing_predicted_writes_the_header_alone(tmp_path):
    text, _ = predict_batches(PredictionWriter(threshold=0.5), CategoryModel(["a"]), tmp_path, [])
    assert text == ",".join(COLUMNS) + "\n"


def test_rows_carry_the_detectors_decisions_and_saved_maps_have_the_images_size(tmp_path):
    """normalized_score and pixel_threshold as anomalib's min-max rule gives them; raw maps placed back on the image."""
    model = CategoryModel(["a", "b"])
    model.score_thresholds[:] = torch.tensor([0.5, 0.75])
    model.score_ranges[0] = torch.tensor([0.25, 0.625])
    model.map_ranges[0] = torch.tensor([0.0, 0.8])
    paths = []
    for i, (height, width) in enumerate([(6, 6), (9, 12)]):  # not the 4 px the model saw; one not square
        paths.append(tmp_path / "in" / f"{i}.png")
        paths[-1].parent.mkdir(exist_ok=True)
        cv2.imwrite(str(paths[-1]), np.zeros((height, width, 3), dtype=np.uint8))
    trainer = bare_trainer(tmp_path / "run")
    trainer.datamodule = MVTecAD(str(tmp_path), image_size=4, crop_size=4)
    batch = {"image": torch.rand(2, 3, 4, 4), "mask": torch.zeros(2, 4, 4), "category": ["a", "b"],
             "path": [str(path) for path in paths], "index": torch.arange(2)}
    maps = torch.rand(2, 4, 4)
    writer = PredictionWriter(save_maps=True)
    writer.on_predict_start(trainer, model)
    writer.write_on_batch_end(trainer, model, {"anomaly_map": maps, "pred_score": torch.tensor([0.7, 0.9])}, None,
                              batch, 0)
    writer.on_predict_epoch_end(trainer, model)
    rows = list(csv.DictReader((tmp_path / "run" / "predictions.csv").open()))
    assert list(rows[0]) == list(COLUMNS)
    # (0.7 - 0.5) / (0.625 - 0.25) + 0.5 = 1.0333 -> clipped to 1; category b has no score range: empty
    assert [(r["normalized_score"], r["pixel_threshold"]) for r in rows] == [("1.0", "0.800000011920929"), ("", "")]
    for row, map_4px, (height, width) in zip(rows, maps, [(6, 6), (9, 12)], strict=True):
        saved = np.load(tmp_path / "run" / row["map"])
        expected = cv2.resize(map_4px.numpy(), (width, height), interpolation=cv2.INTER_LINEAR)  # no crop here
        assert saved.shape == (height, width) and row["map"].startswith(f"maps/{row['category']}/")
        np.testing.assert_allclose(saved, expected, rtol=0, atol=1e-6)
