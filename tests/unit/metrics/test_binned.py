import numpy as np
import torch
from skimage.measure import label

from anomaly_diff.metrics.binned import bin_indices, binned_threshold_counts, image_histograms


def test_bins_are_equal_width_floor_and_clamped():
    scores = torch.tensor([-1.0, 0.0, 0.2499, 0.25, 0.99, 1.0, 7.0])
    assert bin_indices(scores, 4, (0.0, 1.0)).tolist() == [0, 0, 0, 1, 3, 3, 3]


def test_bins_never_reverse_the_order_of_scores():
    scores = torch.sort(torch.randn(10_000, generator=torch.Generator().manual_seed(0)) * 3).values
    bins = bin_indices(scores, 1000, (-2.0, 5.0))
    assert bool((bins[1:] >= bins[:-1]).all())


def test_image_histograms_count_pixels_regions_and_clamped_values():
    rng = np.random.default_rng(0)
    maps = torch.from_numpy(rng.random((3, 10, 10)).astype(np.float32) * 1.2 - 0.1)
    masks = torch.zeros(3, 10, 10)
    masks[1, 1:3, 1:4] = 1
    masks[1, 6, 6] = 1
    masks[2, 5:9, 0:2] = 1
    counts, overlaps, regions, clamped = image_histograms(maps, masks, 8, (0.0, 1.0))
    assert counts.shape == (3, 2, 8) and counts.dtype == torch.int32 and overlaps.shape == (3, 8)
    bins = np.clip(np.floor(maps.double().numpy() * 8), 0, 7).astype(int)
    for i in range(3):
        positive = masks[i].numpy() > 0
        assert counts[i, 1].tolist() == np.bincount(bins[i][positive], minlength=8).tolist()
        assert counts[i, 0].tolist() == np.bincount(bins[i][~positive], minlength=8).tolist()
        labelled = label(positive, connectivity=2)
        weights = np.zeros((10, 10))
        for r in range(1, labelled.max() + 1):
            weights[labelled == r] = 1 / (labelled == r).sum()
        np.testing.assert_allclose(overlaps[i].numpy(), np.bincount(bins[i].ravel(), weights.ravel(), 8), atol=1e-15)
        assert regions[i] == labelled.max()
        assert clamped[i] == int(((maps[i] < 0) | (maps[i] > 1)).sum())


def test_threshold_counts_skip_empty_bins_highest_first():
    counts = torch.tensor([[3, 0, 1, 0], [0, 0, 2, 5]])
    segment = binned_threshold_counts(counts, torch.tensor([0.0, 0.0, 0.5, 1.5], dtype=torch.float64))
    assert segment.positives.tolist() == [5, 2, 0]
    assert segment.negatives.tolist() == [0, 1, 3]
    assert segment.overlaps.tolist() == [1.5, 0.5, 0.0]
