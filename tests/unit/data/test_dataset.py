import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from anomaly_diff.data.batch import Batch
from anomaly_diff.data.dataset import AnomalyDataset, build_transform
from anomaly_diff.data.samples import Sample
from anomaly_diff.errors import DatasetError
from tests.helpers.data import write_image


def _square_image_and_mask(size, top, bottom, left, right):
    image = np.zeros((size, size, 3), dtype=np.uint8)
    image[top:bottom, left:right] = 255
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[top:bottom, left:right] = 255
    return image, mask


def _expected_nearest(mask, image_size, crop_size):
    """Pixel-centre nearest neighbour written out: output pixel u samples source floor((u + 0.5) * src / dst)."""
    source = mask.shape[0]
    offset = (image_size - crop_size) // 2
    coords = [math.floor((u + offset + 0.5) * source / image_size) for u in range(crop_size)]
    return (mask[np.ix_(coords, coords)] > 0).astype(np.float32)


@pytest.mark.parametrize("source", [100, 600])  # enlarged (bilinear) and shrunk (area) images
def test_square_mask_stays_aligned_with_the_square_in_the_image(tmp_path, source):
    image, mask = _square_image_and_mask(source, int(0.4 * source), int(0.6 * source), int(0.3 * source), source // 2)
    sample = Sample(write_image(tmp_path / "i.png", image), write_image(tmp_path / "m.png", mask), 1, "a", "d", "test")
    item = AnomalyDataset([sample], ["a"], build_transform(288, 256))[0]

    expected = _expected_nearest(mask, 288, 256)
    np.testing.assert_array_equal(item["mask"].numpy(), expected)
    assert set(np.unique(item["mask"].numpy())) == {0.0, 1.0}
    # The image's bright square (continuous, interpolated) has its centre where the mask's is, within half a pixel.
    brightness = item["image"][0].numpy()
    rows, cols = np.mgrid[:256, :256]
    for grid in (rows, cols):
        image_centre = (brightness * grid).sum() / brightness.sum()
        mask_centre = (expected * grid).sum() / expected.sum()
        assert abs(image_centre - mask_centre) <= 0.5
    # Well inside the square the image is white, well outside black.
    ys, xs = np.nonzero(expected)
    assert brightness[ys.min() + 2 : ys.max() - 1, xs.min() + 2 : xs.max() - 1].min() == pytest.approx(1.0)
    assert brightness[: ys.min() - 2].max() == pytest.approx(0.0)


def test_item_has_the_batch_fields_and_dtypes(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, size=(40, 40, 3), dtype=np.uint8)
    normal = Sample(write_image(tmp_path / "n.png", rgb), None, 0, "b", "good", "test")
    image, mask = _square_image_and_mask(40, 5, 15, 5, 15)
    mask_path = write_image(tmp_path / "d_m.png", mask)
    anomalous = Sample(write_image(tmp_path / "d.png", image), mask_path, 1, "a", "x", "test")
    dataset = AnomalyDataset([normal, anomalous], ["a", "b"], build_transform(36, 32))

    item = dataset[0]
    assert set(item) == set(Batch.__annotations__)
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert 0 <= item["image"].min() and item["image"].max() <= 1
    assert item["mask"].shape == (32, 32) and item["mask"].dtype == torch.float32 and item["mask"].sum() == 0
    assert (item["label"], item["index"]) == (0, 0)
    assert item["has_mask"].dtype == torch.bool and bool(item["has_mask"])
    assert all(item[key].dtype == torch.int64 for key in ("label", "index"))
    assert (item["category"], item["path"]) == ("b", str(tmp_path / "n.png"))

    batch = next(iter(DataLoader(dataset, batch_size=2)))
    assert batch["image"].shape == (2, 3, 32, 32) and batch["mask"].shape == (2, 32, 32)
    assert batch["label"].tolist() == [0, 1]
    assert batch["index"].tolist() == [0, 1] and batch["category"] == ["b", "a"]
    assert batch["mask"][1].sum() > 0 and batch["has_mask"].tolist() == [True, True]


def test_an_anomalous_image_without_mask_says_so(tmp_path):
    image, _ = _square_image_and_mask(40, 5, 15, 5, 15)
    unmasked = Sample(write_image(tmp_path / "d.png", image), None, 1, "a", "x", "test")
    item = AnomalyDataset([unmasked], ["a"], build_transform(36, 32))[0]
    assert not bool(item["has_mask"]) and item["label"] == 1 and item["mask"].sum() == 0


def test_mask_of_another_size_names_both_files_and_sizes(tmp_path):
    image_path = write_image(tmp_path / "img.png", np.zeros((30, 40, 3), dtype=np.uint8))
    mask_path = write_image(tmp_path / "img_mask.png", np.zeros((30, 30), dtype=np.uint8))
    dataset = AnomalyDataset([Sample(image_path, mask_path, 1, "a", "d", "test")], ["a"], build_transform(32, 32))
    with pytest.raises(DatasetError, match=rf"mask {mask_path} is 30x30 .* its image {image_path} is 40x30"):
        dataset[0]


def test_samples_of_a_category_not_selected_are_refused(tmp_path):
    with pytest.raises(DatasetError, match=r"categories \['z'\] are not among the selected \['a'\]"):
        AnomalyDataset([Sample(tmp_path / "x.png", None, 0, "z", "good", "train")], ["a"], build_transform())
