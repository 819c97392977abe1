import torch

from anomaly_diff.metrics.regions import label_regions, overlap_weights


def test_diagonal_neighbours_join_one_region_and_codes_start_where_asked():
    mask = torch.tensor(
        [
            [1, 0, 0, 0, 1],
            [0, 1, 0, 0, 1],
            [0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0],
        ]
    )
    codes, sizes = label_regions(mask, first_code=5)
    assert codes.dtype == torch.int32 and codes.shape == (20,)
    assert codes.reshape(4, 5).tolist() == [
        [5, 0, 0, 0, 6],
        [0, 5, 0, 0, 6],
        [0, 0, 0, 0, 0],
        [7, 7, 0, 0, 0],
    ]
    assert sizes.tolist() == [2, 2, 2]


def test_empty_mask_has_no_region():
    codes, sizes = label_regions(torch.zeros(3, 3))
    assert codes.tolist() == [0] * 9 and sizes.numel() == 0


def test_overlap_weights_are_inverse_region_sizes_with_zero_for_normal_pixels():
    weights = overlap_weights(torch.tensor([1, 4, 2]))
    assert weights.dtype == torch.float64 and weights.tolist() == [0.0, 1.0, 0.25, 0.5]
