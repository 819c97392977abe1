import pytest
import torch

from anomaly_diff.diffusion.schedule import NoiseSchedule


def test_alphas_cumprod_match_the_cosine_formula(cosine_alphas_cumprod):
    schedule = NoiseSchedule(10, "squaredcos_cap_v2")
    expected = torch.tensor(cosine_alphas_cumprod(10))
    torch.testing.assert_close(schedule.alphas_cumprod, expected, atol=1e-6, rtol=0)
    assert schedule.num_timesteps == 10


def test_rates_are_gathered_per_sample_and_broadcast():
    schedule = NoiseSchedule(10)
    t = torch.tensor([0, 4, 9])
    a = schedule.alpha_bar(t)
    assert a.shape == (3, 1, 1, 1)
    torch.testing.assert_close(a.flatten(), schedule.alphas_cumprod[[0, 4, 9]])
    torch.testing.assert_close(schedule.signal_rate(t) ** 2 + schedule.noise_rate(t) ** 2, torch.ones(3, 1, 1, 1))
    assert schedule.alpha_bar(t, ndim=2).shape == (3, 1)


def test_buffer_follows_dtype_and_is_not_checkpointed():
    schedule = NoiseSchedule(10).to(torch.float64)
    assert schedule.alphas_cumprod.dtype == torch.float64
    assert schedule.state_dict() == {}


def test_sample_timesteps_cover_the_range_uniformly():
    torch.manual_seed(0)
    t = NoiseSchedule(10).sample_timesteps(20000)
    counts = torch.bincount(t, minlength=10).float() / t.numel()
    assert t.min() == 0 and t.max() == 9
    torch.testing.assert_close(counts, torch.full((10,), 0.1), atol=0.01, rtol=0)


def test_invalid_length_is_rejected():
    with pytest.raises(ValueError, match="num_train_timesteps"):
        NoiseSchedule(0)
