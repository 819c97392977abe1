"""Category-free inference end to end through the command line, with a tiny DeCo-Diff.

Two categories that a pretrained network tells apart at a glance (dark noise, and the same noise inverted); one
``fit`` is shared. ``predict`` on a flat folder of both must condition each image on its true category, found by the
model, and write it to ``predictions.csv``; ``category_source=predicted`` on a labelled test set must give the
metrics of the given labels (every prediction is right here), grouped by the true categories.
"""

import csv
import json
import shutil

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from anomaly_diff.cli import main
from anomaly_diff.models.deco_diff import DeCoDiff
from tests.helpers.configs import write_tiny_config
from tests.helpers.data import write_mvtec_ad
from tests.helpers.models import save_tiny_autoencoder
from tests.helpers.runs import run_dirs


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``(config, data root, fit run directory)``: a tiny DeCo-Diff fitted (one epoch) and tested on a and b."""
    tmp = tmp_path_factory.mktemp("category_prediction")
    root = write_mvtec_ad(tmp / "data", categories=("a", "b"), n_train=4, size=32)
    for path in (root / "b").rglob("*.png"):
        if "ground_truth" not in path.parts:
            Image.fromarray(255 - np.asarray(Image.open(path))).save(path)
    model = {"class_path": "anomaly_diff.models.deco_diff.DeCoDiff",
             "init_args": {"autoencoder": str(save_tiny_autoencoder(tmp / "vae")), "unet": "tiny", "patch_sizes": [1],
                           "patch_size_probs": [1.0], "reverse_steps": 2}}
    config = write_tiny_config(tmp / "tiny.yaml", root, model=model, data={"val_fraction": 0.25},
                               heatmaps={"per_category": 0}, report={"examples": 0})
    main(["fit", "--config", str(config)])
    (run,) = run_dirs(tmp / "runs" / "tiny")
    return config, root, run


def newest_run(save_dir):
    return max(run_dirs(save_dir / "tiny"), key=lambda path: path.stat().st_mtime)


def test_predict_on_a_flat_mixed_folder_finds_every_category(trained, tmp_path):
    config, root, run = trained
    checkpoint = run / "checkpoints" / "last.ckpt"
    incoming = tmp_path / "incoming"  # no category folders: a_crack_000.png, b_good_001.png, ...
    sorted_in = tmp_path / "sorted"  # the same images in category folders
    for category in ("a", "b"):
        for source in sorted((root / category / "test").rglob("*.png")):
            for target in (incoming / f"{category}_{source.parent.name}_{source.name}",
                           sorted_in / category / f"{source.parent.name}_{source.name}"):
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(source, target)
    main(["predict", "--config", str(config), "--ckpt_path", str(checkpoint), f"--data.path={incoming}",
          f"--trainer.logger.init_args.save_dir={tmp_path / 'out'}"])
    rows = list(csv.DictReader((newest_run(tmp_path / "out") / "predictions.csv").open()))
    model = DeCoDiff.load_from_checkpoint(checkpoint)
    assert model.category_classifier.fitted.all() and len(rows) == 12
    for row in rows:
        truth = row["path"].rsplit("/", 1)[1][0]
        assert (row["category"], row["category_source"]) == (truth, "predicted"), row["path"]
        assert row["overlay"].startswith(f"predictions/{truth}/")
        assert cv2.imread(str(newest_run(tmp_path / "out") / row["overlay"])).shape == (32, 64, 3)
        threshold = model.score_thresholds[model.categories.index(truth)].item()
        assert float(row["threshold"]) == pytest.approx(threshold, rel=1e-6)

    # The same images in category folders: the categories are given.
    main(["predict", "--config", str(config), "--ckpt_path", str(checkpoint), f"--data.path={sorted_in}",
          f"--trainer.logger.init_args.save_dir={tmp_path / 'given'}"])
    rows = list(csv.DictReader((newest_run(tmp_path / "given") / "predictions.csv").open()))
    assert [(row["path"].split("/")[-2], row["category_source"]) for row in rows] == [
        (row["category"], "given") for row in rows] and len(rows) == 12


def test_predicted_categories_on_a_labelled_test_set_are_scored_by_the_true_ones(trained, tmp_path):
    config, _, run = trained
    main(["test", "--config", str(config), "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
          "--model.init_args.category_source=predicted", f"--trainer.logger.init_args.save_dir={tmp_path}"])
    predicted = newest_run(tmp_path)
    saved = (predicted / "config.yaml").read_text()
    assert "category_source: predicted" in saved
    given, ignoring = (json.loads((r / "metrics.json").read_text()) for r in (run, predicted))
    assert sorted(ignoring["per_category"]) == ["a", "b"]
    assert ignoring == given  # every category predicted right: the same maps, the same metrics
    # not a saved hyper-parameter: LightningCLI would let the checkpoint's win over the command line
    assert "category_source" not in torch.load(run / "checkpoints" / "last.ckpt")["hyper_parameters"]
