from collections import Counter

import numpy as np
import pytest

from anomaly_diff.data import MVTecAD
from anomaly_diff.data.mvtec_ad import make_mvtec_style_samples
from anomaly_diff.errors import DatasetError
from tests.helpers.data import write_image, write_mvtec_ad


def test_records_of_one_category(tmp_path):
    root = write_mvtec_ad(tmp_path, categories=("bottle",), n_train=3, n_good=2, n_defect=2)
    samples = make_mvtec_style_samples(root / "bottle", "bottle")
    train = [s for s in samples if s.split == "train"]
    test = [s for s in samples if s.split == "test"]
    assert [s.image_path for s in train] == [root / "bottle" / "train" / "good" / f"00{i}.png" for i in range(3)]
    assert all(s.label == 0 and s.mask_path is None and s.defect_type == "good" for s in train)
    assert Counter((s.defect_type, s.label) for s in test) == {("good", 0): 2, ("crack", 1): 2, ("scratch", 1): 2}
    for sample in test:
        if sample.label:
            expected = root / "bottle" / "ground_truth" / sample.defect_type / f"{sample.image_path.stem}_mask.png"
            assert sample.mask_path == expected
    assert {s.category for s in samples} == {"bottle"}


def test_datamodule_counts_per_category(tmp_path):
    root = write_mvtec_ad(tmp_path, categories=("b", "a"), n_train=10, n_good=3, n_defect=1)
    datamodule = MVTecAD(str(root), image_size=32, crop_size=32, val_fraction=0.2)
    datamodule.setup()
    assert datamodule.categories == ["a", "b"]
    assert Counter(s.category for s in datamodule.train_dataset.samples) == {"a": 8, "b": 8}
    assert Counter(s.category for s in datamodule.val_dataset.samples) == {"a": 2, "b": 2}
    assert Counter((s.category, s.label) for s in datamodule.test_dataset.samples) == {
        ("a", 0): 3, ("a", 1): 2, ("b", 0): 3, ("b", 1): 2
    }


def test_extra_training_directories_are_refused_not_dropped(tmp_path):
    root = write_mvtec_ad(tmp_path, categories=("a",))
    write_image(root / "a" / "train" / "bad" / "000.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"holds \['bad'\] besides 'good'; training uses normal images only"):
        make_mvtec_style_samples(root / "a", "a")


def test_empty_defect_directory_is_named(tmp_path):
    root = write_mvtec_ad(tmp_path, categories=("a",))
    (root / "a" / "test" / "hole").mkdir()
    with pytest.raises(DatasetError, match=rf"no images found in {root / 'a' / 'test' / 'hole'}"):
        make_mvtec_style_samples(root / "a", "a")


def test_visa_raw_root_read_as_mvtec_names_the_missing_layout(tmp_path):
    (tmp_path / "candle" / "Data" / "Images").mkdir(parents=True)
    datamodule = MVTecAD(str(tmp_path))
    with pytest.raises(DatasetError, match=r"candle/train/good does not exist; expected the training images of"):
        datamodule.setup("fit")
