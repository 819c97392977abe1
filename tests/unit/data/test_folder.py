from collections import Counter

import pytest

from anomaly_diff.data import Folder
from anomaly_diff.errors import DatasetError
from tests.helpers.data import write_folder


def _folder(root, **kwargs):
    arguments = {"normal_dir": "normal", "image_size": 32, "crop_size": 32, "val_fraction": 0.0} | kwargs
    return Folder(str(root), **arguments)


def test_normal_images_are_split_into_train_and_test_with_a_seeded_fraction(tmp_path):
    root = write_folder(tmp_path, n_normal=10, n_abnormal=3)
    datamodule = _folder(root, abnormal_dir="abnormal", mask_dir="masks", test_fraction=0.3, category="widget")
    assert datamodule.categories == ["widget"] and datamodule.num_classes == 1
    datamodule.setup()
    train, test = datamodule.train_dataset.samples, datamodule.test_dataset.samples
    assert len(train) == 7
    assert Counter((s.label, s.defect_type) for s in test) == {(0, "good"): 3, (1, "abnormal"): 3}
    assert not {s.image_path for s in train} & {s.image_path for s in test}
    assert all(s.mask_path == root / "masks" / f"{s.image_path.stem}.png" for s in test if s.label)
    again = _folder(root, abnormal_dir="abnormal", mask_dir="masks", test_fraction=0.3, category="widget")
    again.setup()
    assert [s.image_path for s in again.test_dataset.samples] == [s.image_path for s in test]
    other_seed = _folder(root, abnormal_dir="abnormal", mask_dir="masks", test_fraction=0.3, seed=4)
    other_seed.setup()
    assert {s.image_path for s in other_seed.train_dataset.samples} != {s.image_path for s in train}


def test_validation_comes_from_the_remaining_training_normals(tmp_path):
    root = write_folder(tmp_path, n_normal=10, n_abnormal=2)
    datamodule = _folder(root, abnormal_dir="abnormal", mask_dir="masks", test_fraction=0.2, val_fraction=0.25)
    datamodule.setup()
    assert (len(datamodule.train_dataset), len(datamodule.val_dataset), len(datamodule.test_dataset)) == (6, 2, 4)


def test_mask_suffix(tmp_path):
    root = write_folder(tmp_path, n_normal=4, n_abnormal=2, mask_suffix="_mask")
    datamodule = _folder(root, abnormal_dir="abnormal", mask_dir="masks", mask_suffix="_mask")
    datamodule.setup("test")
    assert sorted(s.mask_path.name for s in datamodule.test_dataset.samples if s.label) == [
        "d000_mask.png", "d001_mask.png"
    ]


def test_without_abnormal_images_everything_trains_and_test_is_refused(tmp_path):
    root = write_folder(tmp_path, n_normal=5, n_abnormal=0)
    datamodule = _folder(root)
    datamodule.setup("fit")
    assert len(datamodule.train_dataset) == 5 and len(datamodule.test_dataset) == 0
    with pytest.raises(DatasetError, match=r"no test images found for categories \['folder'\] of Folder"):
        datamodule.setup("test")


def test_hyperparameters_rebuild_the_folder_datamodule(tmp_path):
    root = write_folder(tmp_path)
    datamodule = _folder(root, abnormal_dir="abnormal", mask_dir="masks", category="widget")
    assert datamodule.hparams["categories"] is None and datamodule.hparams["allow_missing_masks"] is False
    assert Folder(**datamodule.hparams).hparams == datamodule.hparams


def test_abnormal_dir_without_mask_dir_gives_anomalous_images_without_masks(tmp_path):
    root = write_folder(tmp_path, n_abnormal=2, masks=False)
    datamodule = _folder(root, abnormal_dir="abnormal")
    with pytest.warns(UserWarning, match=r"2 anomalous test image\(s\) have no ground-truth mask.*folder \(2\)"):
        datamodule.setup("test")
    anomalous = [s for s in datamodule.test_dataset.samples if s.label == 1]
    assert len(anomalous) == 2 and all(s.mask_path is None and not s.has_mask for s in anomalous)
    assert all(s.has_mask for s in datamodule.test_dataset.samples if s.label == 0)


def test_several_categories_one_subdirectory_each(tmp_path):
    write_folder(tmp_path / "screws", n_normal=6, n_abnormal=2, seed=1)
    write_folder(tmp_path / "nuts", n_normal=5, n_abnormal=3, seed=2)
    (tmp_path / "notes").mkdir()  # no normal/: not a category
    datamodule = _folder(tmp_path, abnormal_dir="abnormal", mask_dir="masks", test_fraction=0.2)
    assert datamodule.categories == ["nuts", "screws"]
    datamodule.setup()
    test = datamodule.test_dataset.samples
    assert Counter((s.category, s.label) for s in test) == {("nuts", 0): 1, ("nuts", 1): 3, ("screws", 0): 1,
                                                             ("screws", 1): 2}
    assert all(s.mask_path == tmp_path / s.category / "masks" / s.image_path.name for s in test if s.label)
    assert all(s.image_path.parent.parent == tmp_path / s.category for s in datamodule.train_dataset.samples)
    selected = _folder(tmp_path, abnormal_dir="abnormal", mask_dir="masks", categories=["screws"])
    assert selected.categories == ["screws"]
    with pytest.raises(DatasetError, match=r"unknown categories \['bolts'\] for Folder .*\['nuts', 'screws'\]"):
        _folder(tmp_path, abnormal_dir="abnormal", mask_dir="masks", categories=["bolts"])
    assert Folder(**selected.hparams).categories == ["screws"]


def test_a_category_without_masks_needs_allow_missing_masks(tmp_path):
    write_folder(tmp_path / "masked", n_normal=6, n_abnormal=2, seed=1)
    write_folder(tmp_path / "unmasked", n_normal=6, n_abnormal=2, seed=2, masks=False)
    with pytest.raises(DatasetError, match=rf"directory {tmp_path / 'unmasked' / 'masks'} does not exist"):
        _folder(tmp_path, abnormal_dir="abnormal", mask_dir="masks").setup("test")
    datamodule = _folder(tmp_path, abnormal_dir="abnormal", mask_dir="masks", allow_missing_masks=True)
    with pytest.warns(UserWarning, match=r"2 anomalous test image\(s\) .* per category: unmasked \(2\);"):
        datamodule.setup("test")
    flags = {(s.category, s.has_mask) for s in datamodule.test_dataset.samples if s.label}
    assert flags == {("masked", True), ("unmasked", False)}


def test_missing_mask_names_image_and_expected_path(tmp_path):
    root = write_folder(tmp_path, n_abnormal=2)
    (root / "masks" / "d001.png").unlink()
    with pytest.raises(DatasetError, match=rf"defective image {root / 'abnormal' / 'd001.png'}: expected "
                                           rf"{root / 'masks' / 'd001.png'}"):
        _folder(root, abnormal_dir="abnormal", mask_dir="masks").setup("fit")


@pytest.mark.parametrize("test_fraction", [-0.5, 1.0])
def test_test_fraction_out_of_range(tmp_path, test_fraction):
    with pytest.raises(DatasetError, match=rf"test_fraction={test_fraction} is out of range"):
        _folder(write_folder(tmp_path), abnormal_dir="abnormal", mask_dir="masks", test_fraction=test_fraction)


def test_missing_and_empty_normal_directories_are_named(tmp_path):
    root = write_folder(tmp_path, n_normal=0, n_abnormal=0)
    with pytest.raises(DatasetError, match=rf"directory {root / 'normal'} does not exist"):
        _folder(root).setup("fit")
    (root / "normal").mkdir()
    with pytest.raises(DatasetError, match=rf"no images found in {root / 'normal'}"):
        _folder(root).setup("fit")
    with pytest.raises(DatasetError, match=rf"directory {root / 'absent'} does not exist"):
        Folder(str(root / "absent"), normal_dir="normal")
