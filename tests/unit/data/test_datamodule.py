"""The shared behaviour of every datamodule, exercised through MVTecAD on a tiny fixture in its real layout."""

import logging
import shutil
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import RandomSampler, SequentialSampler

from anomaly_diff.data import MVTecAD
from anomaly_diff.data.batch import Batch
from anomaly_diff.data.samples import UNKNOWN_CATEGORY, Sample
from anomaly_diff.errors import DatasetError
from tests.helpers.data import corrupt_file, truncate_file, write_image, write_mvtec_ad


@pytest.fixture
def root(tmp_path):
    return write_mvtec_ad(tmp_path / "mvtec", categories=("zipper", "bottle", "carpet"), n_train=10, size=32)


def _datamodule(root, **kwargs):
    return MVTecAD(str(root), image_size=36, crop_size=32, batch_size=4, **kwargs)


def test_categories_are_sorted_and_known_right_after_construction(root):
    datamodule = _datamodule(root)
    assert datamodule.categories == ["bottle", "carpet", "zipper"]
    assert datamodule.num_classes == 3
    assert datamodule.train_dataset is None  # nothing is read before setup


def test_selected_categories_are_sorted_and_only_theirs_are_read(root):
    datamodule = _datamodule(root, categories=["zipper", "bottle"])
    assert datamodule.categories == ["bottle", "zipper"]
    datamodule.setup("fit")
    assert {s.category for s in datamodule.train_dataset.samples} == {"bottle", "zipper"}


def test_unknown_category_lists_the_known_ones(root):
    with pytest.raises(DatasetError, match=r"unknown categories \['tile'\] .*known categories: \['bottle', 'carpet'"):
        _datamodule(root, categories=["bottle", "tile"])


@pytest.mark.parametrize("categories", [[], ["bottle", "bottle"]])
def test_empty_or_repeated_category_list_is_refused(root, categories):
    with pytest.raises(DatasetError, match="categories"):
        _datamodule(root, categories=categories)


def test_missing_root_is_named(tmp_path):
    with pytest.raises(DatasetError, match=rf"directory {tmp_path / 'nowhere'} does not exist; expected the data set"):
        MVTecAD(str(tmp_path / "nowhere"))


def test_root_without_categories_is_refused(tmp_path):
    with pytest.raises(DatasetError, match=rf"MVTecAD found no categories in {tmp_path}"):
        MVTecAD(str(tmp_path))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"val_fraction": 1.0}, r"val_fraction=1.0 is out of range; it must be in \[0, 1\)"),
        ({"val_fraction": -0.1}, r"val_fraction=-0.1 is out of range"),
        ({"image_size": 32, "crop_size": 64}, "crop_size=64 is larger than image_size=32"),
        ({"batch_size": 0}, "batch_size=0 is invalid; it must be an integer >= 1"),
        ({"num_workers": -1}, "num_workers=-1 is invalid"),
        ({"seed": -3}, "seed=-3 is invalid"),
        ({"eval_batch_size": 0}, "eval_batch_size=0 is invalid"),
    ],
)
def test_out_of_range_arguments_are_named(root, kwargs, message):
    arguments = {"image_size": 36, "crop_size": 32} | kwargs
    with pytest.raises(DatasetError, match=message):
        MVTecAD(str(root), **arguments)


def test_empty_category_directory_is_named_at_setup(root):
    empty = root / "empty_cat"
    empty.mkdir()
    datamodule = _datamodule(root)
    assert "empty_cat" in datamodule.categories  # found, never silently left out
    with pytest.raises(DatasetError, match=rf"directory {empty / 'train' / 'good'} does not exist; expected the train"):
        datamodule.setup("fit")


def test_empty_train_directory_is_named_at_setup(root):
    for path in (root / "carpet" / "train" / "good").iterdir():
        path.unlink()
    with pytest.raises(DatasetError, match=rf"no images found in {root / 'carpet' / 'train' / 'good'}"):
        _datamodule(root).setup("fit")


def test_validation_split_is_seeded_disjoint_and_stratified(root):
    first = _datamodule(root, val_fraction=0.2, seed=1)
    first.setup("fit")
    again = _datamodule(root, val_fraction=0.2, seed=1)
    again.setup("fit")
    other = _datamodule(root, val_fraction=0.2, seed=2)
    other.setup("fit")

    val_paths = [sample.image_path for sample in first.val_dataset.samples]
    train_paths = [sample.image_path for sample in first.train_dataset.samples]
    assert val_paths == [sample.image_path for sample in again.val_dataset.samples]
    assert val_paths != [sample.image_path for sample in other.val_dataset.samples]
    assert not set(val_paths) & set(train_paths)
    assert len(val_paths) + len(train_paths) == 3 * 10
    assert Counter(sample.category for sample in first.val_dataset.samples) == {"bottle": 2, "carpet": 2, "zipper": 2}
    assert all(sample.label == 0 for sample in first.train_dataset.samples + first.val_dataset.samples)


def test_validation_split_of_a_category_does_not_depend_on_the_others(root):
    everything = _datamodule(root, val_fraction=0.3)
    everything.setup("fit")
    alone = _datamodule(root, val_fraction=0.3, categories=["carpet"])
    alone.setup("fit")
    carpet = [sample.image_path for sample in everything.val_dataset.samples if sample.category == "carpet"]
    assert carpet == [sample.image_path for sample in alone.val_dataset.samples]


def test_too_few_training_images_for_the_validation_split(tmp_path):
    root = write_mvtec_ad(tmp_path, categories=("a",), n_train=1)
    with pytest.raises(DatasetError, match=r"training normals of category 'a': 1 image\(s\) are too few"):
        _datamodule(root).setup("fit")


def test_no_validation_when_val_fraction_is_zero(root):
    datamodule = _datamodule(root, val_fraction=0.0)
    datamodule.setup("fit")
    assert len(datamodule.train_dataset) == 30
    assert datamodule.val_dataloader() == []


def test_test_split_holds_every_test_image_with_labels_and_masks(root):
    datamodule = _datamodule(root)
    datamodule.setup("test")
    samples = datamodule.test_dataset.samples
    assert len(samples) == 3 * (2 + 2 * 2)
    assert Counter(sample.label for sample in samples) == {0: 6, 1: 12}
    assert all((sample.mask_path is None) == (sample.label == 0) for sample in samples)


def test_loaders_yield_batches_with_the_contract_fields(root):
    datamodule = _datamodule(root, eval_batch_size=5)
    datamodule.setup("fit")
    datamodule.setup("test")
    train = datamodule.train_dataloader()
    assert isinstance(train.sampler, RandomSampler) and not train.drop_last and train.batch_size == 4
    test = datamodule.test_dataloader()
    assert isinstance(test.sampler, SequentialSampler) and test.batch_size == 5
    assert isinstance(datamodule.predict_dataloader().sampler, SequentialSampler)
    assert len(datamodule.predict_dataloader().dataset) == len(test.dataset)
    batches = list(test)
    assert sum(len(batch["path"]) for batch in batches) == 18  # last batch kept (drop_last=False)
    batch = batches[0]
    assert set(batch) == set(Batch.__annotations__)
    assert batch["image"].shape == (5, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (5, 32, 32) and batch["mask"].dtype == torch.float32
    for key in ("label", "index"):
        assert batch[key].dtype == torch.int64
    assert torch.cat([batch["index"] for batch in batches]).tolist() == list(range(18))
    assert batch["path"] == [str(sample.image_path) for sample in test.dataset.samples[:5]]
    anomalous = torch.cat([batch["label"] for batch in batches]) == 1
    mask_sums = torch.cat([batch["mask"].sum(dim=(1, 2)) for batch in batches])
    assert (mask_sums[anomalous] > 0).all() and (mask_sums[~anomalous] == 0).all()


@pytest.mark.parametrize(("num_workers", "persistent"), [(0, False), (2, True)])
def test_workers_are_persistent_when_used(root, num_workers, persistent):
    datamodule = _datamodule(root, num_workers=num_workers)
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    assert (loader.num_workers, loader.persistent_workers) == (num_workers, persistent)


@pytest.mark.parametrize("num_workers", [0, 1])  # a worker process re-raises the error with its message
def test_corrupt_image_stops_loading_and_is_named(root, num_workers):
    bad = corrupt_file(root / "bottle" / "test" / "good" / "001.png")
    datamodule = _datamodule(root, num_workers=num_workers)
    datamodule.setup("test")
    with pytest.raises(DatasetError, match=rf"cannot read image file {bad}"):
        list(datamodule.test_dataloader())


def test_truncated_png_stops_loading_and_is_named(root):
    bad = truncate_file(root / "carpet" / "train" / "good" / "003.png")
    datamodule = _datamodule(root, val_fraction=0.0)
    datamodule.setup("fit")
    with pytest.raises(DatasetError, match=rf"cannot read image file {bad}: image file is truncated"):
        list(datamodule.train_dataloader())


def test_missing_mask_is_reported_at_setup_with_the_expected_path(root):
    mask = root / "zipper" / "ground_truth" / "scratch" / "001_mask.png"
    mask.unlink()
    image = root / "zipper" / "test" / "scratch" / "001.png"
    with pytest.raises(DatasetError, match=rf"mask missing for defective image {image}: expected {mask}"):
        _datamodule(root).setup("fit")


def test_missing_masks_are_accepted_only_when_allowed_and_then_flagged(root):
    (root / "zipper" / "ground_truth" / "scratch" / "001_mask.png").unlink()
    shutil.rmtree(root / "bottle" / "ground_truth" / "crack")  # a defect type without any mask
    with pytest.raises(DatasetError, match="allow_missing_masks=true"):
        _datamodule(root).setup("test")
    datamodule = _datamodule(root, allow_missing_masks=True)
    assert datamodule.hparams["allow_missing_masks"] is True
    with pytest.warns(UserWarning, match=r"3 anomalous test image\(s\) have no ground-truth mask .*bottle \(2\), "
                                         r"zipper \(1\).*pixel metrics are reported as not available"):
        datamodule.setup("test")
    unmasked = {(s.category, s.defect_type, s.image_path.name) for s in datamodule.test_dataset.samples
                if not s.has_mask}
    assert unmasked == {
        ("bottle", "crack", "000.png"), ("bottle", "crack", "001.png"), ("zipper", "scratch", "001.png")
    }
    batch = next(iter(datamodule.test_dataloader()))
    expected = [s.has_mask for s in datamodule.test_dataset.samples[: len(batch["label"])]]
    assert batch["has_mask"].tolist() == expected and not all(expected)


def test_the_shared_check_refuses_a_format_that_leaves_masks_out(root):
    class Careless(MVTecAD):  # a format that drops masks without being allowed to
        def _make_samples(self, category):
            return [Sample(s.image_path, None, s.label, s.category, s.defect_type, s.split)
                    for s in super()._make_samples(category)]

    with pytest.raises(DatasetError, match=r"12 anomalous test image\(s\) of Careless .* have no ground-truth mask.*"
                                           r"bottle \(4\), carpet \(4\), zipper \(4\)"):
        Careless(str(root), image_size=36, crop_size=32).setup("test")


def test_mask_of_another_size_is_reported_at_setup_before_training(root):
    mask = root / "bottle" / "ground_truth" / "crack" / "000_mask.png"
    write_image(mask, np.zeros((20, 32), dtype=np.uint8))
    image = root / "bottle" / "test" / "crack" / "000.png"
    with pytest.raises(DatasetError, match=rf"mask {mask} is 32x20 \(width x height\) but its image {image} is 32x32"):
        _datamodule(root).setup("fit")


def test_test_stage_without_test_images_names_the_categories(root):
    shutil.rmtree(root / "carpet" / "test")
    datamodule = _datamodule(root)
    datamodule.setup("fit")  # training does not need them
    with pytest.raises(DatasetError, match=r"no test images found for categories \['carpet'\] of MVTecAD"):
        datamodule.setup("test")


def test_setup_logs_the_split_sizes(root, caplog):
    with caplog.at_level(logging.INFO, logger="anomaly_diff.data.datamodule"):
        _datamodule(root, val_fraction=0.1).setup("fit")
    assert "3 categories, 27 train / 3 val / 18 test images (12 anomalous)" in caplog.text


def test_hyperparameters_are_recorded_and_rebuild_the_datamodule(root):
    datamodule = _datamodule(root, seed=5)
    assert datamodule.hparams["root"] == str(root) and datamodule.hparams["seed"] == 5
    assert MVTecAD(**datamodule.hparams).hparams == datamodule.hparams


def test_root_that_is_a_file_is_named(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DatasetError, match=rf"{tmp_path / 'file.txt'} is not a directory; expected the data set root"):
        MVTecAD(str(tmp_path / "file.txt"))


def test_predict_on_a_path_reads_only_its_images_and_needs_no_data_set(root, tmp_path):
    images = tmp_path / "incoming"
    for name in ("bottle/1.png", "zipper/2.png", "zipper/3.png"):
        write_image(images / name, np.full((40, 40, 3), 7, dtype=np.uint8))
    datamodule = _datamodule(tmp_path / "absent", categories=["bottle", "zipper"], path=str(images))
    datamodule.setup("predict")
    assert datamodule.train_dataset is None and datamodule.test_dataset is None  # `root` was never read
    batch = next(iter(datamodule.predict_dataloader()))
    assert batch["path"] == [str(images / name) for name in ("bottle/1.png", "zipper/2.png", "zipper/3.png")]
    assert batch["category"] == ["bottle", "zipper", "zipper"] and batch["label"].tolist() == [-1, -1, -1]
    assert batch["index"].tolist() == [0, 1, 2] and batch["image"].shape == (3, 3, 32, 32)
    assert batch["mask"].sum() == 0
    # Without explicit categories they come from `root`, as for any other stage.
    with pytest.raises(DatasetError, match="does not exist"):
        _datamodule(tmp_path / "absent", path=str(images))
    assert _datamodule(root, path=str(images)).categories == ["bottle", "carpet", "zipper"]


def test_predict_on_a_flat_folder_of_mixed_categories_leaves_their_categories_to_the_model(tmp_path):
    images = tmp_path / "incoming"
    for name in ("1.png", "zipper/2.png"):
        write_image(images / name, np.full((40, 40, 3), 7, dtype=np.uint8))
    datamodule = _datamodule(tmp_path / "absent", categories=["bottle", "zipper"], path=str(images))
    datamodule.setup("predict")
    batch = next(iter(datamodule.predict_dataloader()))
    assert batch["category"] == [UNKNOWN_CATEGORY, "zipper"]
