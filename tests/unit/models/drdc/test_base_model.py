import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.transform import resize
from torch import nn

from anomaly_diff.models.drdc.base_model import BaseReconstructor, feature_jitter, neighbourhood_mask


class StubExtractor(nn.Module):
    """Stands in for the frozen CNN: average-pools the image into ``channels`` copies (no weights to load)."""

    def __init__(self, channels=8, output_stride=4):
        super().__init__()
        self.out_channels, self.output_stride = channels, output_stride

    def forward(self, image):
        pooled = F.avg_pool2d(image.mean(1, keepdim=True), self.output_stride)
        return pooled * torch.arange(1, self.out_channels + 1, dtype=image.dtype)[None, :, None, None]


def tiny(**kwargs):
    torch.manual_seed(0)
    options = {"input_size": 24, "hidden_dim": 16, "num_heads": 2, "num_encoder_layers": 1, "num_decoder_layers": 2,
               "feedforward_dim": 32, "neighbourhood": 3, **kwargs}
    return BaseReconstructor(StubExtractor(), **options)


def test_neighbourhood_mask_hides_exactly_the_square_around_each_position():
    mask = neighbourhood_mask(4, 5, 3)
    for (r1, c1), (r2, c2) in itertools.product(itertools.product(range(4), range(5)), repeat=2):
        expected = abs(r1 - r2) <= 1 and abs(c1 - c2) <= 1
        assert mask[r1 * 5 + c1, r2 * 5 + c2].item() == expected
    assert not neighbourhood_mask(3, 3, 0).any()


def test_neighbourhood_mask_errors_are_named():
    with pytest.raises(ValueError, match="0 \\(no mask\\) or odd"):
        neighbourhood_mask(4, 4, 2)
    with pytest.raises(ValueError, match="5x5 neighbourhood hides every token of the 3x3 grid"):
        neighbourhood_mask(3, 3, 5)


def test_feature_jitter_scales_with_the_token_norm():
    torch.manual_seed(0)
    tokens = torch.ones(2, 4000, 10)
    tokens[1] *= 3
    noise = feature_jitter(tokens, scale=20.0, prob=1.0) - tokens
    # std = 20 * ||token|| / C = 20 * sqrt(10) / 10 (first sample), three times that (second)
    assert noise[0].std().item() == pytest.approx(20 * 10**0.5 / 10, rel=0.03)
    assert noise[1].std().item() == pytest.approx(3 * 20 * 10**0.5 / 10, rel=0.03)
    assert torch.equal(feature_jitter(tokens, 20.0, prob=0.0), tokens)


def test_reconstruction_at_a_position_ignores_the_input_in_its_neighbourhood():
    # With no encoder and one decoder layer, the input reaches a query only through the masked cross-attention
    # (deeper stacks pass it on through other positions, as in UniAD).
    model = tiny(num_encoder_layers=0, num_decoder_layers=1).eval()
    features = torch.randn(1, 8, 6, 6)
    perturbed = features.clone()
    perturbed[..., 1:4, 2:5] += 5.0  # the 3x3 neighbourhood of token (2, 3)
    with torch.no_grad():
        before, after = model.reconstruct(features), model.reconstruct(perturbed)
    torch.testing.assert_close(before[..., 2, 3], after[..., 2, 3])
    assert not torch.allclose(before[..., 0, 0], after[..., 0, 0])


def test_training_jitters_the_input_but_targets_clean_features():
    model = tiny()
    image = torch.rand(2, 3, 24, 24)
    model.train()
    torch.manual_seed(1)
    reconstruction, features = model(image)
    torch.testing.assert_close(features, StubExtractor()(image))
    model.eval()
    with torch.no_grad():
        first, _ = model(image)
        second, _ = model(image)
    torch.testing.assert_close(first, second)
    assert reconstruction.shape == features.shape == (2, 8, 6, 6)


def test_image_is_resized_to_the_input_size_first():
    model = tiny().eval()
    image = torch.rand(1, 3, 48, 48)
    resized = F.interpolate(image, size=(24, 24), mode="bilinear", antialias=True)
    torch.testing.assert_close(model.extract(image), StubExtractor()(resized))


def test_error_map_is_the_upsampled_channel_l2_norm():
    reconstruction = torch.zeros(1, 2, 2, 2)
    features = torch.tensor([[[[3.0, 0.0], [0.0, 0.0]], [[4.0, 0.0], [0.0, 1.0]]]])
    coarse = BaseReconstructor.error_map(reconstruction, features, (2, 2))
    torch.testing.assert_close(coarse, torch.tensor([[[5.0, 0.0], [0.0, 1.0]]]))
    fine = BaseReconstructor.error_map(reconstruction, features, (8, 8))
    expected = resize(coarse[0].numpy().astype(np.float64), (8, 8), order=1)  # skimage's bilinear, mirrored border
    assert fine.shape == (1, 8, 8) and fine[0, 0, 0].item() == pytest.approx(2.09375)
    np.testing.assert_allclose(fine[0].numpy(), expected, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"input_size": 26}, "divisible by the backbone output_stride=4"), ({"hidden_dim": 18}, "divisible by 4"),
     ({"jitter_prob": 2.0}, "jitter_prob=2.0")],
)
def test_invalid_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny(**kwargs)
