import pytest
import torch

from anomaly_diff.models.drdc.fusion import FusionConfig, aggregate_refinement, fuse


def test_aggregation_averages_configurations_timesteps_and_scales():
    heatmaps = torch.zeros(1, 2, 3, 2, 1, 1)
    heatmaps[0, :, :, :, 0, 0] = torch.arange(12.0).reshape(2, 3, 2)
    assert aggregate_refinement(heatmaps, "mean").item() == pytest.approx(5.5)
    # "last": timestep index 2 of both configurations and scales: 4, 5, 10, 11
    assert aggregate_refinement(heatmaps, "last").item() == pytest.approx(7.5)


def test_fusion_on_hand_made_maps():
    base = torch.tensor([[[1.0, 2.0], [0.0, 4.0]]])
    refinement = torch.tensor([[[0.5, 0.0], [3.0, 1.0]]])
    torch.testing.assert_close(fuse(base, refinement, 2.0, "multiplicative"), torch.tensor([[[2.0, 2.0], [0.0, 12.0]]]))
    torch.testing.assert_close(fuse(base, refinement, 2.0, "additive"), torch.tensor([[[2.0, 2.0], [6.0, 6.0]]]))
    torch.testing.assert_close(fuse(base, refinement, 0.0, "multiplicative"), base)
    torch.testing.assert_close(fuse(base, refinement, 2.0, "base"), base)
    torch.testing.assert_close(fuse(base, refinement, 2.0, "refinement"), refinement)


def test_multiplicative_fusion_keeps_the_base_ranking_where_the_refinement_is_flat():
    base = torch.rand(2, 8, 8)
    fused = fuse(base, torch.full((2, 8, 8), 0.2), 5.0)
    assert torch.equal(fused.flatten().argsort(), base.flatten().argsort())


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: fuse(torch.zeros(1, 2, 2), torch.zeros(1, 3, 3), 1.0), r"\(1, 2, 2\) and refinement \(1, 3, 3\)"),
        (lambda: fuse(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2), 1.0, "max"), "unknown fusion mode 'max'"),
        (lambda: aggregate_refinement(torch.zeros(1, 2, 2)), "must be \\(B, K, n_t, S, H, W\\)"),
        (lambda: aggregate_refinement(torch.zeros(1, 1, 1, 1, 2, 2), "first"), "unknown temporal fusion"),
        (lambda: FusionConfig(mode="max"), r"fusion.mode='max' is unknown.*'refinement'"),
        (lambda: FusionConfig(temporal="first"), "fusion.temporal='first' is unknown"),
        (lambda: FusionConfig(gamma=-1.0), r"fusion.gamma must be >= 0, got -1.0"),
    ],
)
def test_errors_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()
