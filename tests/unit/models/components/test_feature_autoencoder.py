import pytest
import torch

from anomaly_diff.models.components.autoencoder import LatentCodec, load_autoencoder
from anomaly_diff.models.components.backbone import DEFAULT_WEIGHTS, FeatureExtractor
from anomaly_diff.models.components.feature_autoencoder import FeatureAutoencoder


def small(**kwargs) -> FeatureAutoencoder:
    torch.manual_seed(0)
    return FeatureAutoencoder(**{"block_out_channels": (8, 8, 8, 8), "norm_num_groups": 4, **kwargs})


@pytest.fixture(scope="module")
def pretrained_extractor():
    return FeatureExtractor(layers=(1, 2), output_stride=8)


def images(n=3, size=32, seed=1):
    torch.manual_seed(seed)
    return torch.rand(n, 3, size, size) * 2 - 1


def test_encoder_is_the_pretrained_backbone_standardised_per_channel(pretrained_extractor):
    model = small()
    model.load_backbone_weights(DEFAULT_WEIGHTS)
    batches = [images(3), images(2, seed=2)]
    model.fit_statistics(batches, "features")
    features = torch.cat([pretrained_extractor((b + 1) / 2) for b in batches]).double()
    mean = features.mean(dim=(0, 2, 3), keepdim=True)
    std = features.std(dim=(0, 2, 3), keepdim=True, unbiased=False)
    expected = ((features - mean) / std).float()
    torch.testing.assert_close(torch.cat([model.encode(b) for b in batches]), expected, rtol=1e-4, atol=1e-4)


def test_projected_latents_are_standardised_after_fitting():
    model = small(latent_channels=4)
    batches = [images(3), images(2, seed=2)]
    with torch.no_grad():
        model.projection.weight.mul_(7.0)
        model.projection.bias.add_(3.0)
    model.fit_statistics(batches, "latent")
    latents = torch.cat([model.encode(b) for b in batches]).detach().double()
    assert latents.shape == (5, 4, 4, 4)
    torch.testing.assert_close(latents.mean(dim=(0, 2, 3)), torch.zeros(4, dtype=torch.double), atol=1e-5, rtol=0)
    torch.testing.assert_close(latents.std(dim=(0, 2, 3), unbiased=False), torch.ones(4, dtype=torch.double),
                               atol=1e-5, rtol=0)
    # decode undoes the standardisation before the decoder: decoding the standardised latent equals the decoder
    # applied to the raw projection
    raw = model.projection((model.encoder((batches[0] + 1) / 2) - model.feature_mean) / model.feature_std)
    torch.testing.assert_close(model.decode(model.encode(batches[0])), model.decoder(raw), rtol=1e-4, atol=1e-5)


def test_save_pretrained_folder_loads_through_the_codec_with_identical_outputs(tmp_path):
    model = small(latent_channels=4)
    model.load_backbone_weights(DEFAULT_WEIGHTS)
    model.fit_statistics([images()], "features")
    model.fit_statistics([images()], "latent")
    model.save_pretrained(tmp_path / "codec")
    loaded = load_autoencoder(str(tmp_path / "codec"))
    assert isinstance(loaded, FeatureAutoencoder)
    codec, expected = LatentCodec(str(tmp_path / "codec")), LatentCodec(model.eval())
    image = (images(2) + 1) / 2
    torch.testing.assert_close(codec.encode(image), expected.encode(image), rtol=0, atol=0)
    torch.testing.assert_close(codec.decode(codec.encode(image), clamp=False),
                               expected.decode(expected.encode(image), clamp=False), rtol=0, atol=0)
    assert codec.latent_channels == 4 and codec.downsampling == 8 and codec.scaling_factor == 1.0


def test_decoder_depth_must_match_the_downsampling():
    with pytest.raises(ValueError, match=r"upsample by 4, but downsampling is 8: give 4 entries"):
        FeatureAutoencoder(block_out_channels=(8, 8, 8), norm_num_groups=4)


def test_unknown_statistics_are_named():
    with pytest.raises(ValueError, match="fits 'features' or 'latent', got 'latents'"):
        small().fit_statistics([images()], "latents")
