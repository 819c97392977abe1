"""``anomaly_diff.Detector``: a checkpoint from ``anomaly-diff fit`` scores images given in any form, at their own size.

One tiny fit (autoencoder baseline, validation normals for the calibration) is shared. Maps are checked against the
test pipeline's maps placed back by an independent resize (OpenCV), decisions against the calibration buffers and
numpy, input forms against each other.
"""

import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from anomaly_diff import Detection, Detector
from anomaly_diff.cli import main
from anomaly_diff.data import MVTecAD
from anomaly_diff.data.image_io import load_rgb
from tests.helpers.configs import TINY_AUTOENCODER, write_tiny_config
from tests.helpers.data import write_mvtec_ad
from tests.helpers.runs import run_dirs

REPO = Path(__file__).resolve().parents[2]
DATA = {"image_size": 36, "crop_size": 32, "batch_size": 2, "val_fraction": 0.34}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``(data root, checkpoint moved away from its run)`` of a tiny calibrated fit."""
    tmp = tmp_path_factory.mktemp("detector")
    root = write_mvtec_ad(tmp / "data", categories=("brick", "coffee"), n_train=6, size=32)
    config = write_tiny_config(
        tmp / "tiny.yaml", root, data=DATA,
        model={**TINY_AUTOENCODER, "init_args": {"block_out_channels": [8, 16], "norm_num_groups": 8}},
        calibration={"quantile": 0.75},
    )
    main(["fit", "--config", str(config), "--test_after_fit=false"])
    (run,) = run_dirs(tmp / "runs" / "tiny")
    moved = tmp / "elsewhere" / "model.ckpt"
    moved.parent.mkdir()
    shutil.copy(run / "checkpoints" / "last.ckpt", moved)
    return root, moved


@pytest.fixture(scope="module")
def detector(trained):
    return Detector.from_checkpoint(trained[1], batch_size=3)


def test_every_input_form_gives_the_same_detection(trained, detector):
    path = next((trained[0] / "brick" / "test" / "crack").glob("*.png"))
    array = load_rgb(path)
    tensor = torch.from_numpy(array).permute(2, 0, 1).float() / 255
    forms = [path, str(path), Image.open(path), array, tensor, tensor.mul(255).round().to(torch.uint8)]
    results = [detector.predict(form, category="brick") for form in forms]
    results += detector.predict([array, tensor], category="brick")
    results += detector.predict(tensor[None].repeat(2, 1, 1, 1), "brick")
    first = results[0]
    assert isinstance(first, Detection) and first.anomaly_map.shape == (32, 32)
    for result in results[1:]:  # the same up to float rounding of batched convolutions
        np.testing.assert_allclose(result.anomaly_map, first.anomaly_map, rtol=0, atol=1e-5)
        assert result.score == pytest.approx(first.score, rel=1e-5)
        assert result.category == "brick" and result.category_source == "given"


def test_maps_and_scores_are_the_test_pipelines_placed_back_on_the_image(trained, detector):
    root, _ = trained
    data = MVTecAD(str(root), **DATA)
    data.setup("test")
    samples = [data.test_dataset[i] for i in range(5)]  # more than one batch of the detector (3)
    results = detector.predict([sample["path"] for sample in samples], category=[s["category"] for s in samples])
    # the model's input is the 36 px resize's central 32 px: rows/columns 2..34, i.e. 1.78..30.2 of the 32 px image
    top, bottom = round(2 * 32 / 36), round(34 * 32 / 36)
    assert (top, bottom) == (2, 30)
    with torch.no_grad():
        for sample, result in zip(samples, results, strict=True):
            batch = {k: (v.unsqueeze(0) if torch.is_tensor(v) else [v]) for k, v in sample.items()}
            expected = detector.model.predict_anomaly(batch)
            assert result.score == pytest.approx(expected["pred_score"].item(), rel=1e-5)  # batch of 3 vs 1
            placed = cv2.resize(expected["anomaly_map"][0].numpy(), (bottom - top, bottom - top),
                                interpolation=cv2.INTER_LINEAR)
            np.testing.assert_allclose(result.anomaly_map[top:bottom, top:bottom], placed, rtol=0, atol=1e-5)
            outside = np.ones((32, 32), dtype=bool)
            outside[top:bottom, top:bottom] = False
            assert np.isnan(result.anomaly_map[outside]).all()


def test_a_non_square_image_gets_a_map_of_its_own_size(trained, detector, tmp_path):
    path = next((trained[0] / "coffee" / "test" / "good").glob("*.png"))
    wide = cv2.resize(load_rgb(path), (64, 40), interpolation=cv2.INTER_LINEAR)  # 40 rows, 64 columns
    result = detector.predict(wide, category="coffee")
    assert result.anomaly_map.shape == (40, 64) and result.mask.shape == (40, 64)
    scored = ~np.isnan(result.anomaly_map)
    rows, columns = np.flatnonzero(scored.any(1)), np.flatnonzero(scored.any(0))
    # the crop box scaled back: rows 2 * 40/36 .. 34 * 40/36, columns 2 * 64/36 .. 34 * 64/36, rounded
    assert (rows[0], rows[-1] + 1, columns[0], columns[-1] + 1) == (2, 38, 4, 60)
    assert scored[2:38, 4:60].all()
    full = Detector.from_checkpoint(trained[1], region="full").predict(wide, category="coffee")
    assert full.anomaly_map.shape == (40, 64) and not np.isnan(full.anomaly_map).any()


def test_keep_aspect_scores_the_undistorted_centre(trained, detector):
    path = next((trained[0] / "coffee" / "test" / "good").glob("*.png"))
    wide = cv2.resize(load_rgb(path), (64, 40), interpolation=cv2.INTER_LINEAR)
    kept = Detector(detector.model, 36, 32, keep_aspect=True).predict(wide, category="coffee")
    # 40 x 64 -> 36 x 58, its central 32 x 32: rows 2..38 and columns 14..50 of the original (crop_box's test)
    scored = ~np.isnan(kept.anomaly_map)
    assert scored[2:38, 14:50].all() and scored.sum() == 36 * 36
    scale = 36 / 40
    resized = cv2.resize(wide, (round(64 * scale), 36), interpolation=cv2.INTER_AREA)[2:34, 13:45]
    image = torch.from_numpy(resized).permute(2, 0, 1).float()[None] / 255
    with torch.no_grad():
        expected = detector.model.predict_anomaly({"image": image, "category": ["coffee"]})
    assert kept.score == pytest.approx(expected["pred_score"].item(), rel=1e-5)


def test_compile_compiles_every_diffusers_network(trained, monkeypatch):
    from diffusers import ModelMixin

    compiled = []
    monkeypatch.setattr(ModelMixin, "compile", lambda self, *args, **kwargs: compiled.append(type(self).__name__))
    detector = Detector.from_checkpoint(trained[1], compile=True)
    networks = [type(m).__name__ for m in detector.model.modules() if isinstance(m, ModelMixin)]
    assert networks and compiled == networks


def test_decisions_follow_the_calibrated_thresholds(trained, detector):
    root, _ = trained
    paths = sorted((root / "brick" / "test").rglob("*.png"))
    model = detector.model
    low, high = model.score_ranges[0].tolist()
    threshold, pixel_threshold = model.score_thresholds[0].item(), model.map_ranges[0, 1].item()
    assert not math.isnan(low) and low <= threshold <= high  # the 0.75 quantile of the validation scores
    for result in detector.predict(paths, category="brick"):
        assert result.anomalous == (result.score > threshold)
        expected = min(max((result.score - threshold) / (high - low) + 0.5, 0.0), 1.0)
        assert result.normalized_score == pytest.approx(expected, rel=1e-12)
        assert (result.normalized_score > 0.5) == result.anomalous or result.normalized_score == 1.0
        np.testing.assert_array_equal(result.mask, np.nan_to_num(result.anomaly_map, nan=-np.inf) > pixel_threshold)


def test_score_ranges_are_the_validation_scores_extremes(trained, detector):
    root, _ = trained
    data = MVTecAD(str(root), **DATA)
    data.setup("fit")
    scores = {"brick": [], "coffee": []}
    with torch.no_grad():
        for sample in data.val_dataset:
            batch = {k: (v.unsqueeze(0) if torch.is_tensor(v) else [v]) for k, v in sample.items()}
            scores[sample["category"]].append(detector.model.predict_anomaly(batch)["pred_score"].item())
    for index, category in enumerate(("brick", "coffee")):
        assert detector.model.score_ranges[index].tolist() == pytest.approx([min(scores[category]),
                                                                             max(scores[category])], rel=1e-5)


def test_categories_given_predicted_or_refused(trained, detector):
    path = next((trained[0] / "coffee" / "test" / "good").glob("*.png"))
    predicted = detector.predict(path)
    assert predicted.category_source == "predicted" and predicted.category in ("brick", "coffee")
    with pytest.raises(KeyError, match=r"unknown categories \['zzz'\]"):
        detector.predict(path, category="zzz")
    with pytest.raises(ValueError, match="2 categories for 1 images"):
        detector.predict([path], category=["brick", "coffee"])
    with pytest.raises(ValueError, match=r"must be \(H, W, 3\) or \(H, W\) uint8"):
        detector.predict(np.zeros((8, 8, 4), dtype=np.uint8))
    with pytest.raises(TypeError, match="cannot read an image from int"):
        detector.predict(3)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Detector.from_checkpoint(trained[1].with_name("missing.ckpt"))


def test_the_readme_example_runs(trained, tmp_path, monkeypatch, capsys):
    """The README's "Use it from Python" block, run where its paths exist (this test's model and images)."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### Use it from Python"):]
    code = section[section.index("```python\n") + len("```python\n"):section.index("\n```\n")]
    root, checkpoint = trained
    (tmp_path / "runs/deco_diff/embedded/latest/checkpoints").mkdir(parents=True)
    shutil.copy(checkpoint, tmp_path / "runs/deco_diff/embedded/latest/checkpoints/last.ckpt")
    shutil.copytree(root, tmp_path / ".cache" / "embedded")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 3 and printed[1].startswith("(32, 32) ")
