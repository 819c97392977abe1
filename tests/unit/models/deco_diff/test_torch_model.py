import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.transform import resize

from anomaly_diff.models.deco_diff.torch_model import (
    UNET_PRESETS,
    AnomalyMapConfig,
    DeCoDiffModel,
    UNetPreset,
    build_unet,
)

# Parameters of the reference's UNET_XS .. UNET_XL (DeCo-Diff models.py, LDM UNetModel with ncls=15), counted
# by instantiating them; ours adds the 15-class embedding that the reference keeps inside its UNet.
REFERENCE_PARAMETERS = {"XS": 24749636, "S": 98831492, "M": 222245572, "L": 394991876, "XL": 612717564}


@pytest.mark.parametrize("size", sorted(REFERENCE_PARAMETERS))
def test_presets_have_the_reference_parameter_counts(size):
    preset = UNET_PRESETS[size]
    with torch.device("meta"):
        unet = build_unet(preset)
    count = sum(p.numel() for p in unet.parameters()) + 15 * preset.context_dim
    assert count == REFERENCE_PARAMETERS[size]


def test_presets_follow_the_paper_shape():
    for name, base in {"XS": 64, "S": 128, "M": 192, "L": 256, "XL": 320}.items():
        preset = UNET_PRESETS[name]
        assert (preset.base_channels, preset.channel_mult, preset.dropout) == (base, (1, 2, 4), 0.4)


def test_forward_predicts_a_deviation_per_class(pooling_codec):
    torch.manual_seed(0)
    model = DeCoDiffModel(pooling_codec, num_classes=3, unet="tiny", latent_channels=3).eval()
    x = torch.randn(1, 3, 8, 8).repeat(2, 1, 1, 1)
    out = model(x, torch.tensor([4, 4]), torch.tensor([0, 2]))
    assert out.shape == (2, 3, 8, 8)
    assert not torch.allclose(out[0], out[1]), "the class condition does not reach the UNet"


def test_detect_is_per_image_in_a_batch(pooling_codec):
    torch.manual_seed(0)
    model = DeCoDiffModel(pooling_codec, num_classes=2, unet="tiny", latent_channels=3, timesteps=(5, 0)).eval()
    images, classes = torch.rand(2, 3, 64, 64), torch.tensor([0, 1])
    batched = model.detect(images, classes)
    assert batched.anomaly_map.shape == (2, 64, 64) and batched.reconstruction.shape == (2, 3, 64, 64)
    for i in range(2):
        single = model.detect(images[i : i + 1], classes[i : i + 1])
        torch.testing.assert_close(single.anomaly_map, batched.anomaly_map[i : i + 1], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(single.pred_score, batched.pred_score[i : i + 1], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("fusion", ["geometric", "arithmetic"])
def test_map_of_a_hand_made_correction(pooling_codec, monkeypatch, fusion):
    model = DeCoDiffModel(
        pooling_codec, num_classes=1, unet="tiny", latent_channels=3, anomaly_map=AnomalyMapConfig(fusion=fusion)
    )
    image = torch.rand(1, 3, 64, 64)
    delta = torch.zeros(1, 3, 8, 8)
    delta[0, 0, 2, 3] = 0.3  # the "model" moves one latent cell of one channel
    monkeypatch.setattr(model, "correct", lambda latents, class_index, timesteps=None: latents + delta)
    out = model.detect(image, torch.tensor([0]))

    # image part: decoded correction minus decoded input = delta upsampled; x2 for [-1, 1] units, clip .4, x2.5
    image_part = np.zeros((64, 64))
    image_part[16:24, 24:32] = min(2 * 0.3, 0.4) * 2.5
    image_part = ndimage.gaussian_filter(image_part, 3.0)  # as the reference calls it: mode "reflect"
    # latent part: channel mean 0.1, clip .2, x5, blur sigma 1 on the 8x8 grid, bilinear to 64x64
    latent_part = np.zeros((8, 8))
    latent_part[2, 3] = 0.1 * 5
    latent_part = ndimage.gaussian_filter(latent_part, 1.0)
    latent_part = resize(latent_part, (64, 64))  # skimage defaults, as the reference
    fused = np.sqrt(image_part * latent_part) if fusion == "geometric" else (image_part + latent_part) / 2

    np.testing.assert_allclose(out.image_map[0].numpy(), image_part, atol=1e-5)
    np.testing.assert_allclose(out.latent_map[0].numpy(), latent_part, atol=1e-5)
    np.testing.assert_allclose(out.anomaly_map[0].numpy(), fused, atol=1e-5)
    assert out.pred_score.item() == pytest.approx(fused.max(), abs=1e-5)


def test_input_reference_includes_the_autoencoder_error(pooling_codec, monkeypatch):
    config = AnomalyMapConfig(image_reference="input", image_sigma=0.0, image_clip=10.0, image_scale=1.0)
    model = DeCoDiffModel(pooling_codec, 1, unet="tiny", latent_channels=3, anomaly_map=config)
    monkeypatch.setattr(model, "correct", lambda latents, class_index, timesteps=None: latents)
    image = torch.rand(1, 3, 64, 64)
    out = model.detect(image, torch.tensor([0]))
    expected = 2 * (pooling_codec.decode(pooling_codec.encode(image)) - image).abs().amax(dim=1)
    torch.testing.assert_close(out.image_map, expected)


def test_invalid_settings_are_named(pooling_codec):
    with pytest.raises(ValueError, match="unknown UNet preset 'XXL'"):
        DeCoDiffModel(pooling_codec, 2, unet="XXL")
    with pytest.raises(ValueError, match=r"timesteps=\[10, 0\] must be strictly decreasing"):
        DeCoDiffModel(pooling_codec, 2, unet="tiny", timesteps=[10, 0])
    with pytest.raises(ValueError, match="norm_num_groups=32 must divide"):
        build_unet(UNetPreset(48, 4, 64))
    with pytest.raises(ValueError, match="one entry per channel_mult level"):
        build_unet(UNetPreset(64, 4, 64, attention=(True,)))


def test_default_chain_visits_the_reference_timesteps(pooling_codec, monkeypatch):
    model = DeCoDiffModel(pooling_codec, 1, unet="tiny", latent_channels=3)
    seen = []
    monkeypatch.setattr(model, "forward", lambda x, t, c: seen.append(t.tolist()) or torch.zeros_like(x))
    model.detect(torch.rand(2, 3, 64, 64), torch.tensor([0, 0]))
    assert seen == [[8, 8], [6, 6], [4, 4], [2, 2], [0, 0]]


def test_decoder_outputs_are_compared_unclamped(pooling_codec, monkeypatch):
    config = AnomalyMapConfig(image_sigma=0.0, image_clip=10.0, image_scale=1.0)
    model = DeCoDiffModel(pooling_codec, 1, unet="tiny", latent_channels=3, anomaly_map=config)
    monkeypatch.setattr(model, "correct", lambda latents, class_index, timesteps=None: latents + 0.5)
    out = model.detect(torch.full((1, 3, 64, 64), 0.9), torch.tensor([0]))
    # the decoded correction is 1.4 (past the [0, 1] range): the reference compares it raw, 2 * 0.5 in [-1, 1] units
    torch.testing.assert_close(out.image_map, torch.ones(1, 64, 64))
    assert out.reconstruction.max().item() == 1.0
