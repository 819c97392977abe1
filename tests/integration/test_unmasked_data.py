"""A data set whose anomalous images partly lack masks, end to end through the command line.

A Folder data set with one subdirectory per category: ``masked`` has a mask for every anomalous image, ``unmasked``
none. A tiny autoencoder trains for two steps and tests; ``metrics.json`` must hold image metrics for both, pixel
metrics for ``masked`` only (``null`` with a reason for ``unmasked``) and pixel means over ``masked`` alone, each
value equal to sklearn's on the checkpoint's own maps and scores.
"""

import csv
import json
import math

import numpy as np
import pytest
import torch
import yaml
from sklearn.metrics import roc_auc_score

from anomaly_diff.cli import main
from anomaly_diff.data import Folder
from anomaly_diff.metrics import METRIC_NAMES
from anomaly_diff.models.autoencoder import Autoencoder
from tests.helpers.configs import write_tiny_config
from tests.helpers.data import write_folder
from tests.helpers.runs import run_dirs

DATA = {"normal_dir": "normal", "abnormal_dir": "abnormal", "mask_dir": "masks", "allow_missing_masks": True,
        "test_fraction": 0.25, "image_size": 32, "crop_size": 32, "batch_size": 2, "val_fraction": 0.0}
PIXEL = [m for m in METRIC_NAMES if m.startswith("pixel")]
IMAGE = [m for m in METRIC_NAMES if m.startswith("image")]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """``(data root, run directory)`` of a two-step fit + test on the two-category Folder data set."""
    tmp = tmp_path_factory.mktemp("unmasked")
    write_folder(tmp / "data" / "masked", n_normal=8, n_abnormal=4, seed=1)
    write_folder(tmp / "data" / "unmasked", n_normal=8, n_abnormal=4, seed=2, masks=False)
    config = write_tiny_config(tmp / "tiny.yaml", tmp / "data", trainer={"max_steps": 2},
                               heatmaps={"per_category": 1})
    text = yaml.safe_load(config.read_text())
    text["data"] = {"class_path": "anomaly_diff.data.Folder", "init_args": {"root": str(tmp / "data"), **DATA}}
    config.write_text(yaml.safe_dump(text))
    with pytest.warns(UserWarning, match=r"pixel metrics are not available .* for unmasked \(4 of its 4 anomalous"):
        main(["fit", "--config", str(config)])
    (run_dir,) = run_dirs(tmp / "runs" / "tiny")
    return tmp / "data", run_dir


def test_image_metrics_for_both_pixel_metrics_for_the_masked_category_only(run):
    _, run_dir = run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    masked, unmasked = metrics["per_category"]["masked"], metrics["per_category"]["unmasked"]
    assert all(isinstance(masked[m], float) for m in METRIC_NAMES)
    assert all(isinstance(unmasked[m], float) for m in IMAGE) and all(unmasked[m] is None for m in PIXEL)
    assert metrics["not_available"] == {
        "unmasked": {"metrics": PIXEL, "reason": "4 of its 4 anomalous test images have no ground-truth mask"}
    }
    assert metrics["categories_in_mean"] == {**dict.fromkeys(IMAGE, 2), **dict.fromkeys(PIXEL, 1)}
    for m in PIXEL:  # the mean over the categories that have the metric: masked alone
        assert metrics["mean"][m] == masked[m]
    for m in IMAGE:
        assert metrics["mean"][m] == pytest.approx((masked[m] + unmasked[m]) / 2, abs=1e-12)
    rows = {row["category"]: row
            for row in csv.DictReader((run_dir / "metrics_table.csv").read_text().splitlines())}
    assert [rows["unmasked"][m] for m in PIXEL] == ["n/a"] * 4 and rows["masked"]["pixel_AUROC"] != "n/a"
    assert "pixel metrics are not available for unmasked" in (run_dir / "metrics.md").read_text()
    # the heatmap of an anomalous image without mask has no (empty) mask outline: image | map
    assert {p.parent.name for p in (run_dir / "heatmaps").rglob("abnormal_*.png")} == {"masked", "unmasked"}


def test_the_values_are_sklearn_s_on_the_checkpoint_s_maps(run):
    root, run_dir = run
    model = Autoencoder.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt").eval()
    data = Folder(str(root), **DATA)
    with pytest.warns(UserWarning, match="have no ground-truth mask"):
        data.setup("test")
    maps, scores = {}, {}
    with torch.no_grad():
        for batch in data.test_dataloader():
            prediction = model.predict_anomaly(batch)
            for i, category in enumerate(batch["category"]):
                maps.setdefault(category, []).append((prediction["anomaly_map"][i].numpy(), batch["mask"][i].numpy()))
                scores.setdefault(category, []).append((float(prediction["pred_score"][i]), int(batch["label"][i])))
    metrics = json.loads((run_dir / "metrics.json").read_text())["per_category"]
    pixel_maps = np.stack([m for m, _ in maps["masked"]]).ravel()
    pixel_masks = np.stack([k for _, k in maps["masked"]]).ravel()
    assert metrics["masked"]["pixel_AUROC"] == pytest.approx(roc_auc_score(pixel_masks, pixel_maps), abs=1e-6)
    for category in ("masked", "unmasked"):
        values, labels = zip(*scores[category], strict=True)
        assert metrics[category]["image_AUROC"] == pytest.approx(roc_auc_score(labels, values), abs=1e-6)
    assert not math.isnan(metrics["unmasked"]["image_AUPRC"])
