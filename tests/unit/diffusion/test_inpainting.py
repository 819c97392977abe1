import itertools

import pytest
import torch

from anomaly_diff.diffusion.inpainting import (
    context_fill,
    disjoint_mask_sets,
    inpaint_disjoint,
    repaint,
    select_timesteps,
)
from anomaly_diff.diffusion.schedule import NoiseSchedule


@pytest.mark.parametrize(
    ("height", "width", "num_sets", "patch_size", "layout"),
    [
        (16, 16, 2, 4, "interleaved"),
        (16, 16, 4, 2, "interleaved"),
        (20, 13, 3, 4, "interleaved"),  # sizes not divisible by the patch
        (32, 24, 9, 2, "interleaved"),
        (16, 16, 4, 4, "random"),
        (17, 9, 5, 2, "random"),
        (8, 8, 1, 8, "interleaved"),
    ],
)
def test_mask_sets_are_disjoint_binary_and_cover_every_pixel_once(height, width, num_sets, patch_size, layout):
    masks = disjoint_mask_sets(height, width, num_sets, patch_size, layout, torch.Generator().manual_seed(0))
    assert masks.shape == (num_sets, 1, height, width)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(masks.sum(dim=0), torch.ones(1, height, width))
    assert (masks.flatten(1).sum(1) > 0).all()
    for a, b in itertools.combinations(range(num_sets), 2):
        assert (masks[a] * masks[b]).sum() == 0


def test_masks_are_constant_on_each_patch():
    masks = disjoint_mask_sets(12, 12, 4, 3, "random", torch.Generator().manual_seed(1))
    owner = masks.argmax(dim=0)[0]
    blocks = owner.reshape(4, 3, 4, 3).permute(0, 2, 1, 3).reshape(16, 9)
    assert (blocks == blocks[:, :1]).all()


def test_two_interleaved_sets_are_a_checkerboard_of_patches():
    masks = disjoint_mask_sets(8, 8, 2, 2, "interleaved")
    rows = torch.arange(8)[:, None] // 2
    cols = torch.arange(8)[None, :] // 2
    torch.testing.assert_close(masks[1, 0], ((rows + cols) % 2).float())


@pytest.mark.parametrize("num_sets", [4, 9])
def test_interleaved_sets_surround_each_hidden_patch_by_other_sets(num_sets):
    owner = disjoint_mask_sets(12, 12, num_sets, 1, "interleaved").argmax(dim=0)[0]
    for i, j in itertools.product(range(1, 11), range(1, 11)):
        neighbours = owner[i - 1 : i + 2, j - 1 : j + 2].flatten().tolist()
        neighbours.pop(4)
        assert owner[i, j].item() not in neighbours


def test_random_layout_is_balanced_and_reproducible():
    a = disjoint_mask_sets(10, 10, 3, 1, "random", torch.Generator().manual_seed(5))
    b = disjoint_mask_sets(10, 10, 3, 1, "random", torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b)
    assert sorted(a.flatten(1).sum(1).tolist()) == [33.0, 33.0, 34.0]


def test_too_many_sets_for_the_grid_is_named():
    with pytest.raises(ValueError, match=r"num_sets=5 leaves sets \[4\] empty.*only 4 squares"):
        disjoint_mask_sets(8, 8, 5, 4)
    with pytest.raises(ValueError, match="unknown mask layout"):
        disjoint_mask_sets(8, 8, 2, 4, "stripes")


def test_selected_timesteps():
    assert select_timesteps(100, 5) == [100, 80, 60, 40, 20]
    assert select_timesteps(50, 1) == [50]
    assert select_timesteps(10, 3) == [10, 7, 3]
    with pytest.raises(ValueError, match="n_t=6 .* t_start=5"):
        select_timesteps(5, 6)


def random_predictor(x, t, c):
    return torch.sin(3 * x) + 0.01 * t[:, None, None, None] + c[:, None, None, None]


def test_repaint_leaves_the_known_region_unchanged():
    torch.manual_seed(0)
    schedule = NoiseSchedule(1000, "linear")
    known = torch.rand(3, 3, 16, 16) * 2 - 1
    mask = (torch.rand(3, 1, 16, 16) > 0.5).float()
    out = repaint(random_predictor, known, mask, torch.tensor([0, 1, 2]), schedule, [300, 200, 100])
    assert out.shape == (3, 3, 3, 16, 16)
    keep = (1 - mask).bool().expand_as(known)
    for step in out:
        assert torch.equal(step[keep], known[keep])
        assert not torch.allclose(step[~keep], known[~keep])


def oracle(clean):
    """The noise predictor of a model that knows the clean image: its x0 prediction is exactly ``clean``."""
    schedule = NoiseSchedule(1000, "linear")

    def predict(x, t, c):
        reference = clean.repeat(x.shape[0] // clean.shape[0], 1, 1, 1)
        return (x - schedule.signal_rate(t) * reference) / schedule.noise_rate(t)

    return schedule, predict


def test_inpainting_with_a_perfect_model_returns_the_clean_image_at_every_step():
    torch.manual_seed(0)
    clean = torch.rand(2, 3, 16, 16) * 1.6 - 0.8
    schedule, predict = oracle(clean)
    masks = disjoint_mask_sets(16, 16, 4, 4)
    out = inpaint_disjoint(predict, clean, masks, torch.tensor([0, 1]), schedule, [200, 120, 40])
    assert out.shape == (3, 2, 3, 16, 16)
    torch.testing.assert_close(out, clean.expand_as(out), atol=1e-4, rtol=0)


def test_inpainting_assembles_each_pixel_from_the_set_that_hides_it():
    # The predictor regenerates a constant that names the set (read from the known pixels it sees as zero).
    torch.manual_seed(0)
    schedule = NoiseSchedule(1000, "linear")
    image = torch.zeros(1, 1, 8, 8)
    masks = disjoint_mask_sets(8, 8, 4, 2)
    calls = []

    def predict(x, t, c):
        calls.append(x.shape[0])
        fill = torch.arange(x.shape[0], dtype=x.dtype)[:, None, None, None] / 10  # sample n = set n (B = 1)
        return (x - schedule.signal_rate(t) * fill) / schedule.noise_rate(t)

    out = inpaint_disjoint(predict, image, masks, torch.tensor([0]), schedule, [50])
    expected = (masks * (torch.arange(4.0) / 10)[:, None, None, None]).sum(0)
    torch.testing.assert_close(out[0, 0], expected, atol=1e-5, rtol=0)
    assert calls == [4]  # all sets in one batched call


def test_one_repaint_step_matches_the_formula():
    schedule = NoiseSchedule(1000, "linear")
    known = torch.rand(2, 3, 8, 8) * 2 - 1
    mask = torch.zeros(2, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    a = schedule.alphas_cumprod[150]
    torch.manual_seed(3)
    noise = torch.randn_like(known)
    x_t = a.sqrt() * known + (1 - a).sqrt() * noise
    eps = random_predictor(x_t, torch.full((2,), 150), torch.tensor([1, 1]))
    expected = mask * ((x_t - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1, 1) + (1 - mask) * known
    torch.manual_seed(3)
    out = repaint(random_predictor, known, mask, torch.tensor([1, 1]), schedule, [150], init="noised_input")
    torch.testing.assert_close(out[0], expected)


def test_ddim_step_between_selected_timesteps_matches_the_formula():
    # Second step: x_{t'} = mask * (sqrt(a') x0 + sqrt(1 - a') eps) + (1 - mask) * (sqrt(a') known + sqrt(1 - a') n).
    schedule = NoiseSchedule(1000, "linear")
    known = torch.rand(1, 3, 8, 8) * 2 - 1
    mask = torch.ones(1, 1, 8, 8)
    seen = []

    def predict(x, t, c):
        seen.append(x.clone())
        return 0.5 * x

    torch.manual_seed(0)
    repaint(predict, known, mask, torch.tensor([0]), schedule, [200, 80], init="noised_input")
    a, a_next = schedule.alphas_cumprod[200], schedule.alphas_cumprod[80]
    x0 = ((seen[0] - (1 - a).sqrt() * 0.5 * seen[0]) / a.sqrt()).clamp(-1, 1)
    eps = (seen[0] - a.sqrt() * x0) / (1 - a).sqrt()
    torch.testing.assert_close(seen[1], a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps)


def test_noise_init_starts_the_hidden_region_from_standard_noise():
    schedule = NoiseSchedule(1000, "linear")
    known = torch.full((4, 3, 32, 32), 0.9)
    mask = torch.zeros(4, 1, 32, 32)
    mask[..., :16] = 1
    seen = []

    def predict(x, t, c):
        seen.append(x)
        return torch.zeros_like(x)

    torch.manual_seed(0)
    repaint(predict, known, mask, torch.zeros(4, dtype=torch.long), schedule, [20], init="noise")
    hidden, shown = seen[0][..., :16], seen[0][..., 16:]
    assert abs(hidden.mean().item()) < 0.05 and abs(hidden.std().item() - 1) < 0.05
    a = schedule.alphas_cumprod[20]
    assert abs(shown.mean().item() - 0.9 * a.sqrt().item()) < 0.01
    assert abs(shown.std().item() - (1 - a).sqrt().item()) < 0.01


@pytest.mark.parametrize(
    ("timesteps", "init", "message"),
    [([], "noise", "non-empty"), ([10, 20], "noise", "strictly decreasing"), ([1000], "noise", r"\[0, 1000\)"),
     ([10], "zeros", "unknown inpainting init 'zeros'.*'context'")],
)
def test_invalid_sweeps_are_named(timesteps, init, message):
    with pytest.raises(ValueError, match=message):
        repaint(random_predictor, torch.zeros(1, 3, 4, 4), torch.ones(1, 1, 4, 4), torch.zeros(1, dtype=torch.long),
                NoiseSchedule(1000, "linear"), timesteps, init)
    with pytest.raises(ValueError, match="resample=0 must be >= 1"):
        repaint(random_predictor, torch.zeros(1, 3, 4, 4), torch.ones(1, 1, 4, 4), torch.zeros(1, dtype=torch.long),
                NoiseSchedule(1000, "linear"), [10], resample=0)


def slow_context_fill(known, mask):
    """Pixel by pixel: each pass fills every hidden pixel with a filled 3 x 3 neighbour by their mean."""
    n, c, h, w = known.shape
    value = known.clone()
    filled = [[[mask[i, 0, y, x] == 0 for x in range(w)] for y in range(h)] for i in range(n)]
    for i in range(n):
        while not all(all(row) for row in filled[i]):
            if not any(any(row) for row in filled[i]):
                value[i] = 0
                break
            new = {}
            for y in range(h):
                for x in range(w):
                    if filled[i][y][x]:
                        continue
                    around = [(b, a) for b in range(y - 1, y + 2) for a in range(x - 1, x + 2)
                              if 0 <= b < h and 0 <= a < w and filled[i][b][a]]
                    if around:
                        new[y, x] = torch.stack([value[i, :, b, a] for b, a in around]).mean(0)
            for (y, x), v in new.items():
                value[i, :, y, x] = v
                filled[i][y][x] = True
    return value


def test_context_fill_matches_a_slow_reference_and_ignores_the_hidden_values():
    torch.manual_seed(0)
    known = torch.rand(3, 2, 9, 11) * 2 - 1
    mask = torch.zeros(3, 1, 9, 11)
    mask[0, :, 2:7, 3:9] = 1  # a block: filled in three passes
    mask[1] = (torch.rand(1, 9, 11) > 0.4).float()
    mask[2] = 1  # nothing known: zeros
    filled = context_fill(known, mask)
    torch.testing.assert_close(filled, slow_context_fill(known, mask))
    changed = torch.where(mask.bool().expand_as(known), torch.rand_like(known), known)
    torch.testing.assert_close(context_fill(changed, mask), filled)


def test_context_start_is_the_context_fill_diffused_to_the_first_timestep():
    # x_t0 = sqrt(a) (mask * fill + (1 - mask) * known) + sqrt(1 - a) n, one noise draw for the whole image.
    schedule = NoiseSchedule(1000, "linear")
    known = torch.rand(2, 3, 16, 16) * 2 - 1
    mask = disjoint_mask_sets(16, 16, 2, 4)
    seen = []

    def predict(x, t, c):
        seen.append(x.clone())
        return torch.zeros_like(x)

    torch.manual_seed(0)
    repaint(predict, known, mask, torch.zeros(2, dtype=torch.long), schedule, [100], "context")
    torch.manual_seed(0)
    noise = torch.randn_like(known)
    a = schedule.alphas_cumprod[100]
    start = mask * context_fill(known, mask) + (1 - mask) * known
    torch.testing.assert_close(seen[0], a.sqrt() * start + (1 - a).sqrt() * noise)


class ConvPredictor(torch.nn.Module):
    """A deterministic predictor that mixes neighbouring pixels (a fixed random 5 x 5 convolution)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 5, padding=2)
        torch.nn.init.normal_(self.conv.weight, std=0.2)

    def forward(self, x, t, c):
        return torch.tanh(self.conv(x)) + 0.001 * t[:, None, None, None]


@pytest.mark.parametrize(("init", "resample"), [("context", 1), ("context", 3), ("noise", 1), ("noise", 2)])
def test_a_hidden_pixel_never_reaches_its_own_regeneration(init, resample):
    # Two inputs that differ only inside set 1: set 1's regeneration is the same at every step (same noise draws),
    # while the pixels of the other sets, which see set 1 as context, change.
    torch.manual_seed(0)
    predictor = ConvPredictor()
    schedule = NoiseSchedule(1000, "linear")
    image = torch.rand(2, 3, 16, 16) * 2 - 1
    masks = disjoint_mask_sets(16, 16, 4, 4)
    hidden = masks[1].bool().expand(2, 3, 16, 16)
    changed = torch.where(hidden, torch.rand_like(image) * 2 - 1, image)
    runs = []
    for x in (image, changed):
        torch.manual_seed(7)
        with torch.no_grad():
            runs.append(inpaint_disjoint(predictor, x, masks, torch.tensor([0, 1]), schedule, [100, 60, 20], init,
                                         resample))
    for step in range(3):
        torch.testing.assert_close(runs[0][step][hidden], runs[1][step][hidden], rtol=0, atol=1e-6)
        assert (runs[0][step][~hidden] - runs[1][step][~hidden]).abs().max() > 1e-3


def test_the_sdedit_start_leaks_a_hidden_pixel_into_its_regeneration():
    # The reason "noised_input" is not called inpainting: the same change inside set 1 changes set 1's output.
    torch.manual_seed(0)
    predictor = ConvPredictor()
    schedule = NoiseSchedule(1000, "linear")
    image = torch.rand(1, 3, 16, 16) * 2 - 1
    masks = disjoint_mask_sets(16, 16, 4, 4)
    hidden = masks[1].bool().expand(1, 3, 16, 16)
    changed = torch.where(hidden, -image, image)
    runs = []
    for x in (image, changed):
        torch.manual_seed(7)
        with torch.no_grad():
            runs.append(inpaint_disjoint(predictor, x, masks, torch.tensor([0]), schedule, [100], "noised_input"))
    assert (runs[0][0][hidden] - runs[1][0][hidden]).abs().max() > 0.1


def test_resampling_jumps_back_with_the_repaint_formula():
    # resample=2, one timestep t: pass 1 at x_t; x_clean = mask * x0_hat + (1 - mask) * known, re-noised to t
    # (a_t' = 1 after the last timestep): x_t = sqrt(a_t) x_clean + sqrt(1 - a_t) n; pass 2 at that x_t.
    schedule = NoiseSchedule(1000, "linear")
    known = torch.rand(1, 3, 8, 8) * 2 - 1
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4] = 1
    seen = []

    def predict(x, t, c):
        seen.append(x.clone())
        return 0.3 * x

    torch.manual_seed(0)
    repaint(predict, known, mask, torch.tensor([0]), schedule, [120], "context", resample=2)
    assert len(seen) == 2
    a = schedule.alphas_cumprod[120]
    torch.manual_seed(0)
    torch.randn_like(known)  # the start's draw
    noise = torch.randn_like(known)
    x0 = ((seen[0] - (1 - a).sqrt() * 0.3 * seen[0]) / a.sqrt()).clamp(-1, 1)
    clean = mask * x0 + (1 - mask) * known
    torch.testing.assert_close(seen[1], a.sqrt() * clean + (1 - a).sqrt() * noise)
