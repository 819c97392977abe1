import cv2
import numpy as np
import pytest
from PIL import Image

from anomaly_diff.data.image_io import load_mask, load_rgb
from anomaly_diff.errors import DatasetError
from tests.helpers.data import corrupt_file, truncate_file, write_image

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)


def test_rgb_png_is_read_unchanged(tmp_path):
    np.testing.assert_array_equal(load_rgb(write_image(tmp_path / "x.png", RGB)), RGB)


def test_grayscale_is_replicated_to_three_channels(tmp_path):
    gray = RGB[..., 0]
    image = load_rgb(write_image(tmp_path / "g.png", gray))
    assert Image.open(tmp_path / "g.png").mode == "L"
    np.testing.assert_array_equal(image, np.stack([gray] * 3, axis=2))


def test_rgba_drops_alpha_without_compositing(tmp_path):
    rgba = np.concatenate([RGB, np.zeros((6, 5, 1), dtype=np.uint8)], axis=2)  # fully transparent
    path = write_image(tmp_path / "a.png", rgba)
    assert Image.open(path).mode == "RGBA"
    np.testing.assert_array_equal(load_rgb(path), RGB)


def test_palette_image_takes_its_palette_colours(tmp_path):
    palette = [10, 20, 30, 200, 150, 100] + [0] * (256 * 3 - 6)
    indices = (RNG.integers(0, 2, size=(6, 5))).astype(np.uint8)
    image = Image.fromarray(indices, mode="P")
    image.putpalette(palette)
    image.save(tmp_path / "p.png")
    expected = np.array([[10, 20, 30], [200, 150, 100]], dtype=np.uint8)[indices]
    np.testing.assert_array_equal(load_rgb(tmp_path / "p.png"), expected)


def test_16_bit_gray_png_keeps_the_high_byte(tmp_path):
    values = RNG.integers(0, 65536, size=(6, 5)).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I;16")
    expected = (values >> 8).astype(np.uint8)
    np.testing.assert_array_equal(load_rgb(tmp_path / "g16.png"), np.stack([expected] * 3, axis=2))


def test_16_bit_rgb_png_keeps_the_high_byte(tmp_path):
    values = RNG.integers(0, 65536, size=(6, 5, 3)).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "c16.png"), values[..., ::-1])  # OpenCV writes BGR
    assert cv2.imread(str(tmp_path / "c16.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    np.testing.assert_array_equal(load_rgb(tmp_path / "c16.png"), (values >> 8).astype(np.uint8))


def test_float_image_is_refused_with_its_mode(tmp_path):
    Image.fromarray(RNG.random((6, 5)).astype(np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(DatasetError, match=r"f\.tif is a floating-point \(mode F\) image"):
        load_rgb(tmp_path / "f.tif")


def test_corrupt_image_error_names_the_file(tmp_path):
    path = corrupt_file(write_image(tmp_path / "bad.png", RGB))
    with pytest.raises(DatasetError, match=rf"cannot read image file {path}: .*corrupt, truncated or not an image"):
        load_rgb(path)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_image_error_names_the_file(tmp_path, suffix):
    big = RNG.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    path = truncate_file(write_image(tmp_path / f"cut{suffix}", big), keep=0.5)
    with pytest.raises(DatasetError, match=rf"cannot read image file {path}: .*truncated"):
        load_rgb(path)


def test_missing_image_error_names_the_file(tmp_path):
    with pytest.raises(DatasetError, match=rf"image file {tmp_path / 'gone.png'} does not exist"):
        load_rgb(tmp_path / "gone.png")


@pytest.mark.parametrize(
    ("array", "mode"),
    [
        (np.array([[0, 1, 2], [255, 0, 7]], dtype=np.uint8), "L"),
        (np.array([[0, 1, 2], [255, 0, 7]], dtype=np.uint16) * 200, "I;16"),
        (np.stack([np.array([[0, 1, 0], [0, 0, 7]], dtype=np.uint8), np.array([[0, 0, 2], [255, 0, 0]], np.uint8),
                   np.zeros((2, 3), np.uint8)], axis=2), "RGB"),
    ],
)
def test_mask_is_binarised_above_zero_in_any_channel(tmp_path, array, mode):
    Image.fromarray(array).save(tmp_path / "m.png")
    assert Image.open(tmp_path / "m.png").mode == mode
    mask = load_mask(tmp_path / "m.png")
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, [[0, 1, 1], [1, 0, 1]])


def test_palette_mask_is_binarised_on_the_index_like_visa(tmp_path):
    indices = np.array([[0, 1, 2], [0, 0, 3]], dtype=np.uint8)
    image = Image.fromarray(indices, mode="P")
    image.putpalette([0, 0, 0, 0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 12))  # index 1 is also black
    image.save(tmp_path / "p.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "p.png"), [[0, 1, 1], [0, 0, 1]])


def test_corrupt_mask_error_names_the_file(tmp_path):
    path = corrupt_file(tmp_path / "m_mask.png")
    with pytest.raises(DatasetError, match=rf"cannot read image file {path}"):
        load_mask(path)
