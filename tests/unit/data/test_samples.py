import logging
from pathlib import Path

import numpy as np
import pytest

from anomaly_diff.data.samples import (
    UNKNOWN_CATEGORY,
    UNLABELLED,
    MaskIndex,
    Sample,
    list_images,
    list_subdirectories,
    prediction_samples,
    seeded_subset,
)
from anomaly_diff.errors import DatasetError
from tests.helpers.data import write_image

PIXELS = np.zeros((4, 4, 3), dtype=np.uint8)


def test_list_images_sorts_matches_extensions_case_insensitively_and_logs_the_rest(tmp_path, caplog):
    for name in ("b.JPG", "a.png", "c.bmp"):
        write_image(tmp_path / name, PIXELS)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".DS_Store").write_text("x")
    (tmp_path / "sub").mkdir()
    with caplog.at_level(logging.WARNING, logger="anomaly_diff.data.samples"):
        images = list_images(tmp_path, "test images")
    assert [path.name for path in images] == ["a.png", "b.JPG", "c.bmp"]
    assert "ignored 2 entries" in caplog.text and "notes.txt" in caplog.text and "sub" in caplog.text
    assert ".DS_Store" not in caplog.text


def test_list_images_names_the_directory_when_missing_or_empty(tmp_path):
    with pytest.raises(DatasetError, match=rf"directory {tmp_path / 'nope'} does not exist; expected the things"):
        list_images(tmp_path / "nope", "the things")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=rf"no images found in {tmp_path / 'empty'}; expected the things"):
        list_images(tmp_path / "empty", "the things")


def test_list_subdirectories_skips_hidden_ones(tmp_path):
    for name in ("b", "a", ".hidden"):
        (tmp_path / name).mkdir()
    assert [path.name for path in list_subdirectories(tmp_path, "x")] == ["a", "b"]


def test_mask_index_matches_by_stem_plus_suffix_with_any_extension(tmp_path):
    write_image(tmp_path / "000_mask.png", PIXELS[..., 0])
    write_image(tmp_path / "001_mask.bmp", PIXELS[..., 0])
    masks = MaskIndex(tmp_path, "_mask")
    assert masks.mask_for(Path("/x/000.png")) == tmp_path / "000_mask.png"
    assert masks.mask_for(Path("/x/001.JPG")) == tmp_path / "001_mask.bmp"


def test_mask_index_names_image_and_expected_mask_when_missing(tmp_path):
    masks = MaskIndex(tmp_path / "ground_truth" / "crack", "_mask")
    expected = tmp_path / "ground_truth" / "crack" / "007_mask.png"
    with pytest.raises(DatasetError, match=rf"mask missing for defective image /d/007.png: expected {expected}"):
        masks.mask_for(Path("/d/007.png"))


def test_mask_index_refuses_two_masks_for_one_image(tmp_path):
    write_image(tmp_path / "000.png", PIXELS[..., 0])
    write_image(tmp_path / "000.bmp", PIXELS[..., 0])
    with pytest.raises(DatasetError, match="several masks match image"):
        MaskIndex(tmp_path).mask_for(Path("000.jpg"))


@pytest.mark.parametrize(
    ("n", "fraction", "held"), [(10, 0.1, 1), (10, 0.35, 4), (60, 0.1, 6), (3, 0.01, 1), (5, 0, 0)]
)
def test_seeded_subset_sizes_disjointness_order_and_determinism(n, fraction, held):
    items = list(range(n))
    kept, held_out = seeded_subset(items, fraction, seed=3, key="val/a", what="x")
    assert len(held_out) == held
    assert sorted(kept + held_out) == items and not set(kept) & set(held_out)
    assert kept == sorted(kept) and held_out == sorted(held_out)
    assert (kept, held_out) == seeded_subset(items, fraction, seed=3, key="val/a", what="x")


def test_seeded_subset_depends_on_seed_and_key():
    items = list(range(100))
    base = seeded_subset(items, 0.2, seed=0, key="val/a", what="x")[1]
    assert seeded_subset(items, 0.2, seed=1, key="val/a", what="x")[1] != base
    assert seeded_subset(items, 0.2, seed=0, key="val/b", what="x")[1] != base


def test_seeded_subset_refuses_to_leave_nothing():
    with pytest.raises(DatasetError, match="training normals of 'a': 1 image"):
        seeded_subset([0], 0.1, seed=0, key="k", what="training normals of 'a'")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"label": 0, "mask_path": Path("m.png"), "split": "test"}, "normal image .* has a mask"),
        ({"label": 1, "mask_path": Path("m.png"), "split": "train"}, "is in the train split"),
        ({"label": 2, "mask_path": None, "split": "test"}, "label must be 0"),
        ({"label": 0, "mask_path": None, "split": "val"}, "split must be 'train', 'test' or 'predict'"),
        ({"label": -1, "mask_path": None, "split": "test"}, "label -1 in split 'test'; images to predict"),
        ({"label": 0, "mask_path": None, "split": "predict"}, "label 0 in split 'predict'; images to predict"),
    ],
)
def test_sample_invariants(kwargs, message):
    with pytest.raises(DatasetError, match=message):
        Sample(image_path=Path("i.png"), category="a", defect_type="x", **kwargs)


def test_has_mask_says_whether_the_ground_truth_is_known():
    def sample(label, mask_path, split="test"):
        return Sample(Path("i.png"), mask_path, label, "a", "x", split)

    assert sample(0, None).has_mask and sample(1, Path("m.png")).has_mask
    # an anomalous image without mask is a valid sample (the datamodule decides whether to accept it)
    assert not sample(1, None).has_mask and not sample(UNLABELLED, None, "predict").has_mask


def test_mask_index_returns_none_for_a_missing_mask_when_told(tmp_path):
    write_image(tmp_path / "000.png", PIXELS[..., 0])
    assert MaskIndex(tmp_path).mask_for(Path("/x/000.png"), missing_ok=True) == tmp_path / "000.png"
    assert MaskIndex(tmp_path).mask_for(Path("/x/001.png"), missing_ok=True) is None
    assert MaskIndex(tmp_path / "absent").mask_for(Path("/x/000.png"), missing_ok=True) is None
    with pytest.raises(DatasetError, match="needs a ground-truth mask .*allow_missing_masks=true"):
        MaskIndex(tmp_path).mask_for(Path("/x/001.png"))


def test_prediction_samples_take_the_category_from_the_top_directory(tmp_path, caplog):
    for name in ("bottle/a.png", "bottle/deep/er/b.png", "cable/c.JPG", "cable/readme.txt"):
        write_image(tmp_path / name, PIXELS) if name.endswith(("png", "JPG")) else (tmp_path / name).write_text("x")
    with caplog.at_level(logging.WARNING, logger="anomaly_diff.data.samples"):
        samples = prediction_samples(tmp_path, ["bottle", "cable"])
    assert [(s.image_path.relative_to(tmp_path).as_posix(), s.category) for s in samples] == [
        ("bottle/a.png", "bottle"), ("bottle/deep/er/b.png", "bottle"), ("cable/c.JPG", "cable")
    ]
    fields = {(s.label, s.mask_path, s.split, s.defect_type) for s in samples}
    assert fields == {(UNLABELLED, None, "predict", "unknown")}
    assert "readme.txt" in caplog.text


def test_prediction_samples_with_one_category_take_any_layout_and_single_files(tmp_path):
    write_image(tmp_path / "x.png", PIXELS)
    write_image(tmp_path / "line 2" / "y.png", PIXELS)
    assert [s.category for s in prediction_samples(tmp_path, ["bottle"])] == ["bottle", "bottle"]
    assert [s.image_path for s in prediction_samples(tmp_path / "x.png", ["bottle"])] == [tmp_path / "x.png"]


def test_prediction_samples_of_a_flat_mixed_folder_have_an_unknown_category(tmp_path):
    for name in ("x.png", "bottle/y.png", "batch 2/z.png"):
        write_image(tmp_path / name, PIXELS)
    samples = prediction_samples(tmp_path, ["bottle", "cable"])
    assert [(s.image_path.relative_to(tmp_path).as_posix(), s.category) for s in samples] == [
        ("batch 2/z.png", UNKNOWN_CATEGORY), ("bottle/y.png", "bottle"), ("x.png", UNKNOWN_CATEGORY)
    ]
    assert [s.category for s in prediction_samples(tmp_path / "x.png", ["bottle", "cable"])] == [UNKNOWN_CATEGORY]
    with pytest.raises(DatasetError, match=f"category '{UNKNOWN_CATEGORY}' in split 'test'; only images to predict"):
        Sample(tmp_path / "x.png", None, 0, UNKNOWN_CATEGORY, "good", "test")


def test_prediction_samples_name_what_cannot_be_predicted(tmp_path):
    with pytest.raises(DatasetError, match=f"directory {tmp_path / 'nope'} does not exist; expected images to predict"):
        prediction_samples(tmp_path / "nope", ["a"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=f"no images found under {tmp_path / 'empty'}"):
        prediction_samples(tmp_path / "empty", ["a"])
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match=f"{tmp_path / 'notes.txt'} is not an image file"):
        prediction_samples(tmp_path / "notes.txt", ["a"])
