import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.transform import resize

from anomaly_diff.models.components.anomaly_map import (
    clip_and_scale,
    fuse_maps,
    gaussian_blur,
    image_score,
    resize_maps,
)


@pytest.mark.parametrize("sigma", [1.0, 3.0])
def test_blur_matches_scipy_gaussian_filter(sigma):
    rng = np.random.default_rng(0)
    maps = rng.random((2, 40, 48)).astype(np.float32)
    ours = gaussian_blur(torch.from_numpy(maps), sigma).numpy()
    for b in range(2):
        # torchvision reflects without repeating the edge pixel: scipy's "mirror" mode
        expected = ndimage.gaussian_filter(maps[b].astype(np.float64), sigma, mode="mirror", truncate=4.0)
        np.testing.assert_allclose(ours[b], expected, atol=1e-5)
        # and the reference's default ("reflect") differs only near the border
        radius = int(4 * sigma + 0.5)
        reference = ndimage.gaussian_filter(maps[b].astype(np.float64), sigma)
        np.testing.assert_allclose(
            ours[b, radius:-radius, radius:-radius], reference[radius:-radius, radius:-radius], atol=1e-5
        )


def test_blur_keeps_channel_layout_and_identity_at_zero_sigma():
    maps = torch.rand(2, 3, 16, 16)
    assert gaussian_blur(maps, 1.0).shape == (2, 3, 16, 16)
    assert gaussian_blur(maps, 0.0) is maps
    # a radius larger than the map is capped so reflection padding stays valid
    small = torch.rand(1, 4, 4)
    assert gaussian_blur(small, 3.0).shape == (1, 4, 4)
    with pytest.raises(ValueError, match="sigma must be >= 0"):
        gaussian_blur(maps, -1.0)


def test_clip_and_scale_on_hand_values():
    maps = torch.tensor([[0.0, 0.1, 0.4, 0.9]])
    torch.testing.assert_close(clip_and_scale(maps, 0.4, 2.5), torch.tensor([[0.0, 0.25, 1.0, 1.0]]))
    with pytest.raises(ValueError, match="clip must be > 0"):
        clip_and_scale(maps, 0.0, 1.0)


def test_fusion_on_hand_made_maps():
    a = torch.tensor([[[0.0, 0.25], [1.0, 0.64]]])
    b = torch.tensor([[[0.5, 1.0], [1.0, 0.25]]])
    torch.testing.assert_close(fuse_maps(a, b, "geometric"), torch.tensor([[[0.0, 0.5], [1.0, 0.4]]]))
    torch.testing.assert_close(fuse_maps(a, b, "arithmetic"), torch.tensor([[[0.25, 0.625], [1.0, 0.445]]]))
    with pytest.raises(ValueError, match="unknown fusion 'harmonic'"):
        fuse_maps(a, b, "harmonic")


def test_image_score_max_and_top_k_mean():
    maps = torch.tensor([[[1.0, 5.0], [3.0, 2.0]], [[0.0, 0.0], [0.0, 4.0]]])
    torch.testing.assert_close(image_score(maps), torch.tensor([5.0, 4.0]))
    torch.testing.assert_close(image_score(maps, top_k=2), torch.tensor([4.0, 2.0]))
    torch.testing.assert_close(image_score(maps, top_k=4), torch.tensor([2.75, 1.0]))
    with pytest.raises(ValueError, match=r"top_k=5 must lie in \[1, 4\]"):
        image_score(maps, top_k=5)


def test_resize_matches_skimage_bilinear_upsampling():
    rng = np.random.default_rng(1)
    maps = rng.random((1, 8, 8)).astype(np.float32)
    ours = resize_maps(torch.from_numpy(maps), (32, 32)).numpy()[0]
    expected = resize(maps[0], (32, 32), order=1, mode="edge", anti_aliasing=False)
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    assert resize_maps(torch.from_numpy(maps), (8, 8)).shape == (1, 8, 8)
