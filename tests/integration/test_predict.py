"""Calibration, the test report and ``predict`` on a folder, end to end through the command line.

One ``fit`` (tiny autoencoder, validation split) is shared; every value the run writes is checked against an
independent computation from the checkpoint: thresholds against numpy quantiles of the validation scores, the
report's decisions and examples against the test scores, the prediction CSV against the model's own scores.
"""

import csv
import re
import shutil
from collections import defaultdict

import cv2
import numpy as np
import pytest
import torch

from anomaly_diff import Detector
from anomaly_diff.cli import main
from anomaly_diff.data import MVTecAD
from anomaly_diff.models.autoencoder import Autoencoder
from anomaly_diff.postprocessing import crop_box
from tests.helpers.configs import TINY_AUTOENCODER, write_tiny_config
from tests.helpers.data import write_mvtec_ad
from tests.helpers.runs import run_dirs

DATA = {"image_size": 36, "crop_size": 32, "batch_size": 2, "val_fraction": 0.34}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``(config, root, fit run directory)`` of a tiny fit + test with 2 validation normals per category."""
    tmp = tmp_path_factory.mktemp("predict")
    root = write_mvtec_ad(tmp / "data", categories=("a", "b"), n_train=6, size=32)
    config = write_tiny_config(
        tmp / "tiny.yaml", root, data=DATA,
        model={**TINY_AUTOENCODER, "init_args": {"block_out_channels": [8, 16], "norm_num_groups": 8}},
        report={"examples": 2}, calibration={"quantile": 0.75},
    )
    main(["fit", "--config", str(config)])
    (run,) = run_dirs(tmp / "runs" / "tiny")
    return config, root, run


def scores_of(model, dataset) -> list[tuple[str, str, int, float]]:
    """``(path, category, label, score)`` of every image of a dataset, one image at a time."""
    rows = []
    with torch.no_grad():
        for sample in dataset:
            batch = {k: (v.unsqueeze(0) if torch.is_tensor(v) else [v]) for k, v in sample.items()}
            rows.append((sample["path"], sample["category"], int(sample["label"]),
                         model.predict_anomaly(batch)["pred_score"].item()))
    return rows


@pytest.fixture(scope="module")
def model(trained):
    _, _, run = trained
    return Autoencoder.load_from_checkpoint(run / "checkpoints" / "last.ckpt").eval()


@pytest.fixture(scope="module")
def data(trained):
    _, root, _ = trained
    datamodule = MVTecAD(str(root), **DATA)
    datamodule.setup("fit")
    datamodule.setup("test")
    return datamodule


def test_thresholds_are_the_quantile_of_the_validation_normals(model, data):
    validation = scores_of(model, data.val_dataset)
    assert len(validation) == 4 and {label for _, _, label, _ in validation} == {0}
    for index, category in enumerate(model.categories):
        scores = [score for _, c, _, score in validation if c == category]
        assert model.score_thresholds[index].item() == pytest.approx(np.quantile(scores, 0.75), rel=1e-5)
        assert model.map_ranges[index, 1].item() > model.map_ranges[index, 0].item()


def test_report_holds_the_metric_table_decisions_and_extreme_examples(trained, model, data):
    _, _, run = trained
    report = (run / "report.md").read_text()
    assert (run / "metrics.md").read_text() in report
    test = scores_of(model, data.test_dataset)
    for index, category in enumerate(model.categories):
        threshold = model.score_thresholds[index].item()
        rows = [(label, score) for _, c, label, score in test if c == category]
        flagged = [sum(score > threshold for label, score in rows if label == y) for y in (0, 1)]
        totals = [sum(label == y for label, _ in rows) for y in (0, 1)]
        row = rf"\| {category} \| {threshold:.6g} \| {flagged[0]}/{totals[0]} .*\| {flagged[1]}/{totals[1]} "
        assert re.search(row, report)
    # The clearest detection of each category is its highest-scoring anomalous image, the closest false alarm its
    # highest-scoring normal one; each is listed with its picture, which exists.
    by_kind = defaultdict(list)
    for path, category, label, score in test:
        by_kind[(category, label)].append((score, path))
    for category in model.categories:
        best_path = max(by_kind[(category, 1)])[1]
        weakest_path = min(by_kind[(category, 1)])[1]
        alarm_path = max(by_kind[(category, 0)])[1]
        section = report.split(f"### {category}")[1].split("### ")[0]
        found, missed, alarms = (section.split(f"**{title}")[1] for title in ("Clearest", "Weakest", "Closest"))
        assert found.index(f"`{best_path}`") < found.index("2. score")
        assert missed.index(f"`{weakest_path}`") < missed.index("2. score")
        assert alarms.index(f"`{alarm_path}`") < alarms.index("2. score")
    pictures = re.findall(r"\]\((report/[^)]+\.png)\)", report)
    assert len(pictures) == 2 * 3 * 2 and all(cv2.imread(str(run / p)).shape == (32, 96, 3) for p in pictures)


def test_predict_on_a_folder_writes_scores_decisions_and_overlays(trained, model, tmp_path):
    config, root, run = trained
    incoming = tmp_path / "incoming"
    for category in ("a", "b"):
        for source in (root / category / "test" / "crack" / "000.png", root / category / "test" / "good" / "001.png"):
            (incoming / category).mkdir(parents=True, exist_ok=True)
            shutil.copy(source, incoming / category / f"{source.parent.name}_{source.name}")
    out = tmp_path / "out"
    main(["predict", "--config", str(config), "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
          f"--data.path={incoming}", f"--trainer.logger.init_args.save_dir={out}"])
    (predict_run,) = run_dirs(out / "tiny")
    rows = list(csv.DictReader((predict_run / "predictions.csv").open()))
    dataset = MVTecAD(str(root), **DATA, path=str(incoming))
    dataset.setup("predict")
    expected = scores_of(model, dataset.predict_dataset)
    assert [row["path"] for row in rows] == [path for path, *_ in expected] and len(rows) == 4
    for row, (_, category, _, score) in zip(rows, expected, strict=True):
        threshold = model.score_thresholds[model.categories.index(category)].item()
        assert row["category"] == category
        assert float(row["score"]) == pytest.approx(score, rel=1e-5)
        assert float(row["threshold"]) == pytest.approx(threshold, rel=1e-6)
        assert row["anomalous"] == str(float(row["score"]) > float(row["threshold"]))
        assert cv2.imread(str(predict_run / row["overlay"])).shape == (32, 64, 3)  # image | map (no mask)

    # One threshold for all categories instead of the calibrated ones.
    main(["predict", "--config", str(config), "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
          f"--data.path={incoming}", f"--trainer.logger.init_args.save_dir={out}", "--predictions.threshold=1e9"])
    newest = max(run_dirs(out / "tiny"), key=lambda p: p.stat().st_mtime)
    rows = list(csv.DictReader((newest / "predictions.csv").open()))
    assert {(row["threshold"], row["anomalous"]) for row in rows} == {("1000000000.0", "False")}



@pytest.mark.parametrize("keep_aspect", [False, True])
def test_predict_saves_maps_of_each_images_own_size_as_the_detector_gives_them(trained, model, tmp_path, keep_aspect):
    """Non-square images of several sizes: each saved map has its image's size, NaN outside the crop's box, and
    equals the Detector's map of the same image (one post-processing path)."""
    config, root, run = trained
    incoming = tmp_path / "incoming" / "a"
    incoming.mkdir(parents=True)
    source = cv2.imread(str(root / "a" / "test" / "crack" / "000.png"))
    sizes = {"tall.png": (50, 30), "wide.png": (40, 64), "square.png": (32, 32)}  # (height, width)
    for name, (height, width) in sizes.items():
        cv2.imwrite(str(incoming / name), cv2.resize(source, (width, height), interpolation=cv2.INTER_LINEAR))
    out = tmp_path / "out"
    main(["predict", "--config", str(config), "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
          f"--data.path={incoming}", f"--data.init_args.keep_aspect={str(keep_aspect).lower()}",
          f"--trainer.logger.init_args.save_dir={out}", "--predictions.save_maps=true"])
    (predict_run,) = run_dirs(out / "tiny")
    rows = list(csv.DictReader((predict_run / "predictions.csv").open()))
    detector = Detector(model, DATA["image_size"], DATA["crop_size"], keep_aspect=keep_aspect)
    assert len(rows) == 3
    for row in rows:
        name = row["path"].rsplit("/", 1)[-1]
        height, width = sizes[name]
        saved = np.load(predict_run / row["map"])
        top, bottom, left, right = crop_box(height, width, DATA["image_size"], DATA["crop_size"], keep_aspect)
        scored = ~np.isnan(saved)
        assert saved.shape == (height, width)
        assert scored[top:bottom, left:right].all() and scored.sum() == (bottom - top) * (right - left)
        expected = detector.predict(row["path"], category="a")
        np.testing.assert_allclose(saved, expected.anomaly_map, rtol=0, atol=1e-5)
        assert float(row["score"]) == pytest.approx(expected.score, rel=1e-5)
