import pytest
import torch

from anomaly_diff.diffusion.schedule import NoiseSchedule, resolve_chain, respaced_timesteps


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


def _reference_ddim_respacing(num_timesteps, count):
    """The reference's rule, re-derived from its definition (DeCo-Diff diffusion/respace.py, "ddimN"): the
    evenly strided subset of range(T) starting at 0 whose size is exactly N, for the smallest such stride; the
    chain visits the subset from its largest element down."""
    strides = [s for s in range(1, num_timesteps) if -(-num_timesteps // s) == count]
    return sorted(range(0, num_timesteps, strides[0]), reverse=True) if strides else None


@pytest.mark.parametrize("num_timesteps", [10, 20, 1000])
def test_respaced_timesteps_follow_the_reference_rule(num_timesteps):
    for count in range(1, num_timesteps + 1):
        expected = _reference_ddim_respacing(num_timesteps, count)
        if expected is None:
            with pytest.raises(ValueError, match=f"reverse_steps={count}: no integer stride"):
                respaced_timesteps(num_timesteps, count)
        else:
            assert respaced_timesteps(num_timesteps, count) == expected


def test_reference_chains_at_ten_timesteps():
    # the reference's --reverse-steps 5 (its default) and the other counts it documents
    assert respaced_timesteps(10, 5) == [8, 6, 4, 2, 0]
    expected = [[5, 0], [8, 4, 0], [9, 6, 3, 0], list(range(9, -1, -1))]
    assert [respaced_timesteps(10, n) for n in (2, 3, 4, 10)] == expected


def test_resolve_chain_takes_exactly_one_form():
    assert resolve_chain(10, 5, None) == [8, 6, 4, 2, 0]
    assert resolve_chain(10, None, (4, 3, 2, 1, 0)) == [4, 3, 2, 1, 0]
    for reverse_steps, timesteps in ((5, [4, 0]), (None, None)):
        with pytest.raises(ValueError, match="give exactly one of reverse_steps"):
            resolve_chain(10, reverse_steps, timesteps)
    with pytest.raises(ValueError, match=r"timesteps=\[0, 4\] must be strictly decreasing"):
        resolve_chain(10, None, [0, 4])
