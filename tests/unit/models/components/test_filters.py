import numpy as np
import pytest
import torch
from scipy import ndimage

from anomaly_diff.models.components.filters import high_pass, mean_filter


@pytest.mark.parametrize("size", [1, 3, 5, 4])
def test_mean_filter_matches_scipy_uniform_filter(size):
    rng = np.random.default_rng(0)
    maps = rng.random((2, 3, 11, 14)).astype(np.float32)
    ours = mean_filter(torch.from_numpy(maps), size).numpy()
    # torch's reflect padding does not repeat the edge pixel: scipy's "mirror"; both put an even window's extra
    # pixel before the centre.
    expected = ndimage.uniform_filter(maps.astype(np.float64), size=(1, 1, size, size), mode="mirror")
    np.testing.assert_allclose(ours, expected, atol=1e-6)


def test_high_pass_removes_constants_and_keeps_the_mean_filtered_difference():
    torch.testing.assert_close(high_pass(torch.full((1, 2, 9, 9), 0.3), 5), torch.zeros(1, 2, 9, 9))
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 4, 4] = 9.0
    out = high_pass(x, 3)
    assert out[0, 0, 4, 4].item() == pytest.approx(8.0)
    assert out[0, 0, 3, 3].item() == pytest.approx(-1.0)
    assert out[0, 0, 0, 0].item() == 0.0


def test_invalid_sizes_are_named():
    with pytest.raises(ValueError, match="size must be >= 1"):
        mean_filter(torch.zeros(1, 1, 4, 4), 0)
    with pytest.raises(ValueError, match="too large for 4x4"):
        mean_filter(torch.zeros(1, 1, 4, 4), 9)
