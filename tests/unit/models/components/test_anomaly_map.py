import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.transform import resize

from anomaly_diff.errors import ConfigError
from anomaly_diff.models.components.anomaly_map import (
    clip_and_scale,
    fuse_maps,
    gaussian_blur,
    image_score,
    resize_maps,
)


def _blur_reference(maps: np.ndarray, sigma: float) -> np.ndarray:
    """The DeCo-Diff reference: scipy's gaussian_filter (mode "reflect", truncate 4) per 2-D map."""
    flat = maps.reshape(-1, *maps.shape[-2:])
    return np.stack([ndimage.gaussian_filter(m.astype(np.float64), sigma) for m in flat]).reshape(maps.shape)


@pytest.mark.parametrize(
    ("shape", "sigma"),
    [
        ((2, 256, 256), 3.0),
        ((3, 32, 32), 1.0),
        ((2, 16, 16), 2.0),
        ((2, 40, 23), 3.0),
        ((2, 5, 5), 3.0),  # kernel (radius 12) wider than the map: scipy reflects repeatedly
        ((2, 2, 3), 7.0),
        ((1, 1, 7), 1.5),
        ((2, 3, 20, 24), 1.0),  # (B, C, H, W)
        ((2, 16, 16), 0.3),  # radius 1
    ],
)
def test_blur_matches_scipy_gaussian_filter_over_every_pixel(shape, sigma):
    maps = np.random.default_rng(0).random(shape).astype(np.float32)
    ours = gaussian_blur(torch.from_numpy(maps), sigma)
    assert ours.shape == shape and ours.dtype == torch.float32
    assert np.abs(ours.numpy() - _blur_reference(maps, sigma)).max() <= 1e-5


def test_blur_dtypes_truncate_and_invalid_sigma():
    maps = np.random.default_rng(1).random((2, 12, 9))
    expected = _blur_reference(maps, 2.0)
    ours = gaussian_blur(torch.from_numpy(maps), 2.0)
    assert ours.dtype == torch.float64 and np.abs(ours.numpy() - expected).max() <= 1e-12
    half = gaussian_blur(torch.from_numpy(maps).half(), 2.0)
    assert half.dtype == torch.float16 and np.abs(half.float().numpy() - expected).max() <= 1e-3
    narrow = np.stack([ndimage.gaussian_filter(m, 2.0, truncate=1.5) for m in maps])
    assert np.abs(gaussian_blur(torch.from_numpy(maps), 2.0, truncate=1.5).numpy() - narrow).max() <= 1e-12
    zero = torch.rand(2, 3, 16, 16)
    assert gaussian_blur(zero, 0.0) is zero
    with pytest.raises(ValueError, match="sigma must be >= 0"):
        gaussian_blur(zero, -1.0)


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
    with pytest.raises(ConfigError, match=r"top_k=5 must lie in \[1, 4\]"):
        image_score(maps, top_k=5)


@pytest.mark.parametrize(
    ("shape", "size"),
    [
        ((2, 32, 32), (256, 256)),
        ((3, 16, 16), (128, 128)),
        ((2, 7, 7), (20, 20)),  # non-integer factor
        ((2, 9, 5), (40, 17)),  # non-square
        ((1, 1, 4), (3, 9)),
        ((2, 3, 8, 6), (24, 30)),  # (B, C, H, W)
        ((2, 64, 48), (16, 20)),  # downsampling: skimage anti-aliases first
        ((2, 30, 10), (13, 25)),  # one axis down, one up
        ((2, 40, 12), (2, 3)),  # anti-aliasing kernel wider than the map: mirrored repeatedly
    ],
)
def test_resize_matches_skimage_resize_over_every_pixel(shape, size):
    maps = np.random.default_rng(2).random(shape).astype(np.float32)
    ours = resize_maps(torch.from_numpy(maps), size)
    flat = maps.reshape(-1, *shape[-2:])
    expected = np.stack([resize(m, size, order=1) for m in flat]).reshape(*shape[:-2], *size)
    assert ours.shape == expected.shape and ours.dtype == torch.float32
    assert np.abs(ours.numpy() - expected).max() <= 1e-5


def test_resize_keeps_maps_of_the_target_size():
    maps = torch.rand(1, 8, 8)
    assert resize_maps(maps, (8, 8)) is maps


def test_fused_map_matches_the_deco_diff_reference_over_every_pixel():
    # calculate_anomaly_maps of the DeCo-Diff evaluation: blur (sigma 3 / 1), resize the latent part, fuse
    rng = np.random.default_rng(3)
    image_part, latent_part = rng.random((2, 64, 64)).astype(np.float32), rng.random((2, 8, 8)).astype(np.float32)
    expected = np.stack(
        [
            np.sqrt(ndimage.gaussian_filter(i, 3) * resize(ndimage.gaussian_filter(la, 1), (64, 64)))
            for i, la in zip(image_part, latent_part, strict=True)
        ]
    )
    latent_map = resize_maps(gaussian_blur(torch.from_numpy(latent_part), 1.0), (64, 64))
    ours = fuse_maps(gaussian_blur(torch.from_numpy(image_part), 3.0), latent_map)
    assert np.abs(ours.numpy() - expected).max() <= 1e-5
