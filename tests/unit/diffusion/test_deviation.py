import pytest
import torch

from anomaly_diff.diffusion.deviation import correct_deviations, corrupt, deviation_target
from anomaly_diff.diffusion.masks import sample_patch_corruption
from anomaly_diff.diffusion.schedule import NoiseSchedule


def test_forward_and_target_invert_each_other():
    torch.manual_seed(0)
    schedule = NoiseSchedule(10)
    x0 = torch.randn(16, 4, 16, 16)
    corruption = sample_patch_corruption(x0, (1, 2, 4), (0.4, 0.3, 0.3))
    t = torch.arange(16) % 10
    x_t = corrupt(x0, corruption.noise, corruption.keep, schedule, t)
    d = deviation_target(x0, corruption.noise, corruption.keep, schedule, t)
    clean = corruption.keep.expand_as(x0).bool()
    assert (~clean).any() and clean.any()
    # x0 = x_t - sqrt(1 - a_t) * d on corrupted cells; d = 0 and x_t = x0 on clean cells
    recovered = x_t - schedule.noise_rate(t) * d
    torch.testing.assert_close(recovered[~clean], x0[~clean], atol=1e-5, rtol=0)
    assert torch.equal(d[clean], torch.zeros_like(d[clean]))
    assert torch.equal(x_t[clean], x0[clean])


def test_forward_matches_the_equation_cell_by_cell(cosine_alphas_cumprod):
    schedule = NoiseSchedule(10)
    abar = cosine_alphas_cumprod(10)
    x0 = torch.tensor([[[[0.5, -1.0]]]])
    e = torch.tensor([[[[2.0, 0.25]]]])
    keep = torch.tensor([[[[0.0, 1.0]]]])
    t = torch.tensor([3])
    a = abar[3]
    expected_xt = torch.tensor([[[[a**0.5 * 0.5 + (1 - a) ** 0.5 * 2.0, -1.0]]]])
    expected_d = torch.tensor([[[[2.0 - (1 - a**0.5) / (1 - a) ** 0.5 * 0.5, 0.0]]]])
    torch.testing.assert_close(corrupt(x0, e, keep, schedule, t), expected_xt)
    torch.testing.assert_close(deviation_target(x0, e, keep, schedule, t), expected_d)


def test_sampler_on_a_linear_model_matches_the_unrolled_chain(cosine_alphas_cumprod):
    schedule = NoiseSchedule(10)
    s = [(1 - a) ** 0.5 for a in cosine_alphas_cumprod(10)]
    k = 0.3
    calls = []

    def predict(x, t):  # a known linear "model" that also depends on the timestep
        calls.append(t.clone())
        return k * x + t.float().reshape(-1, 1, 1, 1)

    x = torch.tensor([1.0, -2.0, 0.5]).reshape(3, 1, 1, 1)
    result = correct_deviations(predict, x, schedule, [8, 4, 0])

    # by hand: t = 8, 4, 0; x_next = x0_hat + s_next d with the chain's next timestep; the last step returns x0_hat
    x8 = x.double()
    d8 = k * x8 + 8
    x4 = (x8 - s[8] * d8) + s[4] * d8
    d4 = k * x4 + 4
    x0 = (x4 - s[4] * d4) + s[0] * d4
    d0 = k * x0
    expected = x0 - s[0] * d0
    torch.testing.assert_close(result.double(), expected, atol=1e-6, rtol=0)
    assert [c.tolist() for c in calls] == [[8, 8, 8], [4, 4, 4], [0, 0, 0]]


def test_sampler_with_zero_deviation_returns_the_input():
    x = torch.randn(2, 4, 8, 8)
    out = correct_deviations(lambda z, t: torch.zeros_like(z), x, NoiseSchedule(10), [8, 6, 4, 2, 0])
    assert torch.equal(out, x)


@pytest.mark.parametrize("timesteps", [[], [10, 0], [4, 4, 0], [2, 4], [3, -1]])
def test_sampler_rejects_an_invalid_chain(timesteps):
    with pytest.raises(ValueError, match=r"must be strictly decreasing timesteps in \[0, 10\)"):
        correct_deviations(lambda z, t: z, torch.zeros(1, 4, 2, 2), NoiseSchedule(10), timesteps)
