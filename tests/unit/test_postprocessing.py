"""Where the model's input lies in the original image, for the square and the aspect-preserving resize."""

import cv2
import numpy as np
import pytest
import torch

from anomaly_diff.data.dataset import build_transform
from anomaly_diff.postprocessing import crop_box, to_image_resolution


def _image(height, width):
    return np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize(("height", "width", "interpolation"), [(40, 64, cv2.INTER_AREA), (24, 30, cv2.INTER_LINEAR)])
def test_keep_aspect_scales_the_shorter_side_then_crops_the_centre(height, width, interpolation):
    image = _image(height, width)
    out = build_transform(36, 32, keep_aspect=True)(image=image)["image"]
    # independent: OpenCV resize of the shorter side to 36 (area when shrinking, bilinear when enlarging), then the
    # central 32 x 32
    scale = 36 / min(height, width)
    resized = cv2.resize(image, (round(width * scale), round(height * scale)), interpolation=interpolation)
    top, left = (resized.shape[0] - 32) // 2, (resized.shape[1] - 32) // 2
    expected = resized[top:top + 32, left:left + 32].astype(np.float32) / 255
    np.testing.assert_array_equal(out.permute(1, 2, 0).numpy(), expected)


def test_crop_box_of_both_resizes():
    # square: 40 x 64 stretched to 36 x 36, crop rows/columns 2..34 -> rows 2*40/36..34*40/36, columns *64/36
    assert crop_box(40, 64, 36, 32) == (2, 38, 4, 60)
    # keep aspect: 40 x 64 -> 36 x 58 (64 * 0.9 = 57.6), crop rows 2..34 -> 2.2..37.8, columns 13..45 -> 14.3..49.7
    assert crop_box(40, 64, 36, 32, keep_aspect=True) == (2, 38, 14, 50)
    # a tall image: 64 x 40 -> 58 x 36, the crop's rows 13..45 and columns 2..34
    assert crop_box(64, 40, 36, 32, keep_aspect=True) == (14, 50, 2, 38)


def test_the_map_is_placed_on_the_box_and_nan_elsewhere():
    anomaly_map = torch.arange(32 * 32, dtype=torch.float32).reshape(32, 32)
    full = to_image_resolution(anomaly_map, 40, 64, 36, 32, keep_aspect=True)
    assert full.shape == (40, 64)
    scored = ~np.isnan(full)
    assert scored[2:38, 14:50].all() and scored.sum() == 36 * 36
    expected = cv2.resize(anomaly_map.numpy(), (36, 36), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(full[2:38, 14:50], expected, rtol=0, atol=1e-3)
