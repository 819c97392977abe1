import pytest
import torch
from scipy import stats

from anomaly_diff.diffusion.masks import (
    check_patch_sizes,
    random_patch_mask,
    sample_patch_corruption,
    sample_patch_sizes,
    shuffle_patches,
)

SIZES = (1, 2, 4, 8, 16)
PROBS = (0.3, 0.25, 0.2, 0.15, 0.1)


def test_patch_size_frequencies_follow_the_probabilities():
    torch.manual_seed(0)
    sizes = sample_patch_sizes(40000, SIZES, PROBS)
    freq = torch.stack([(sizes == s).float().mean() for s in SIZES])
    # the binomial std is at most 0.0023 here; 0.01 is more than 4 sigma
    torch.testing.assert_close(freq, torch.tensor(PROBS), atol=0.01, rtol=0)


@pytest.mark.parametrize("size", [1, 2, 4, 8, 16])
def test_mask_is_patch_aligned_with_the_reference_count(size):
    torch.manual_seed(size)
    ratios = torch.tensor([0.0, 0.1, 0.33, 0.69, 1.0])
    mask = random_patch_mask(32, 32, torch.full((5,), size), ratios)
    assert mask.shape == (5, 1, 32, 32)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    blocks = mask.unfold(2, size, size).unfold(3, size, size)  # (B, 1, 32/s, 32/s, s, s)
    assert (blocks.amax(dim=(-1, -2)) == blocks.amin(dim=(-1, -2))).all(), "a patch is partly marked"
    n = (32 // size) ** 2
    expected = [n - int(n * (1 - r)) for r in ratios.tolist()]
    assert blocks[..., 0, 0].sum(dim=(1, 2, 3)).long().tolist() == expected


def test_mask_mixes_patch_sizes_within_a_batch():
    torch.manual_seed(0)
    sizes = torch.tensor([1, 16, 4])
    mask = random_patch_mask(32, 32, sizes, torch.full((3,), 0.5))
    for b, s in enumerate(sizes.tolist()):
        blocks = mask[b : b + 1].unfold(2, s, s).unfold(3, s, s)
        assert (blocks.amax(dim=(-1, -2)) == blocks.amin(dim=(-1, -2))).all()
        n = (32 // s) ** 2
        assert int(blocks[..., 0, 0].sum()) == n - n // 2


def test_corrupted_fraction_is_uniform_on_0_to_max_ratio():
    torch.manual_seed(0)
    x0 = torch.randn(2000, 4, 32, 32)
    corruption = sample_patch_corruption(x0, patch_sizes=(1,), patch_size_probs=(1.0,), max_mask_ratio=0.7)
    fraction = 1 - corruption.keep.mean(dim=(1, 2, 3))
    assert fraction.min() >= 0 and fraction.max() <= 0.7 + 1 / 1024
    assert stats.kstest(fraction.numpy(), stats.uniform(0, 0.7).cdf).pvalue > 0.01
    assert corruption.keep.shape == (2000, 1, 32, 32)


def test_corruption_draws_patch_sizes_with_the_given_probabilities():
    torch.manual_seed(1)
    corruption = sample_patch_corruption(torch.randn(6000, 1, 16, 16), SIZES, PROBS)
    freq = torch.stack([(corruption.patch_sizes == s).float().mean() for s in SIZES])
    torch.testing.assert_close(freq, torch.tensor(PROBS), atol=0.025, rtol=0)  # > 4 binomial sigma


def test_noise_holds_shuffled_latents_on_a_uniform_fraction():
    torch.manual_seed(0)
    batch = 1000
    # latent values far from anything Gaussian noise produces, so the shuffled cells can be recognised
    x0 = 1000 + torch.arange(batch * 4 * 16 * 16, dtype=torch.float).reshape(batch, 4, 16, 16)
    corruption = sample_patch_corruption(x0, (1,), (1.0,), max_shuffle_ratio=0.3)
    shuffled = corruption.noise > 500
    assert (shuffled.all(dim=1) | ~shuffled.any(dim=1)).all(), "a cell mixes shuffled and Gaussian channels"
    fraction = shuffled[:, 0].float().mean(dim=(1, 2))
    assert stats.kstest(fraction.numpy(), stats.uniform(0, 0.3).cdf).pvalue > 0.01
    gaussian = corruption.noise[~shuffled]
    assert abs(gaussian.mean()) < 0.02 and abs(gaussian.std() - 1) < 0.02
    # every shuffled value is a value of the batch's latents
    assert torch.isin(corruption.noise[shuffled], x0).all()


@pytest.mark.parametrize("size", [1, 4])
def test_shuffle_moves_whole_patches_of_the_batch(size):
    torch.manual_seed(0)
    x = torch.arange(3 * 2 * 8 * 8, dtype=torch.float).reshape(3, 2, 8, 8)
    out = shuffle_patches(x, torch.full((3,), size))

    def patches(t):
        return t.unfold(2, size, size).unfold(3, size, size).permute(0, 2, 3, 1, 4, 5).reshape(-1, 2 * size * size)

    source, result = patches(x), patches(out)
    # the output's patches are exactly the input's patches, permuted
    assert torch.equal(source.sort(dim=0).values, result.sort(dim=0).values)
    assert torch.equal(result[result[:, 0].argsort()], source[source[:, 0].argsort()])
    assert not torch.equal(out, x)


def test_patch_size_validation_names_the_problem():
    with pytest.raises(ValueError, match=r"patch_sizes \[3\] do not divide the 8x8"):
        check_patch_sizes((1, 3), (0.5, 0.5), 8, 8)
    with pytest.raises(ValueError, match="sum to 1"):
        check_patch_sizes((1, 2), (0.5, 0.6), 8, 8)
    with pytest.raises(ValueError, match="equally long"):
        check_patch_sizes((1, 2), (1.0,), 8, 8)
    with pytest.raises(ValueError, match="do not divide the 8x8"):
        sample_patch_corruption(torch.zeros(2, 4, 8, 8), patch_sizes=(16,), patch_size_probs=(1.0,))
