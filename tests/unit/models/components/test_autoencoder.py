import pytest
import torch
from diffusers import AutoencoderKL

from anomaly_diff.models.components.autoencoder import LatentCodec, load_autoencoder


def tiny_vae(scaling_factor: float = 0.5) -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
        scaling_factor=scaling_factor,
    ).eval()


def test_save_pretrained_round_trip_gives_identical_latents(tmp_path):
    vae = tiny_vae()
    vae.save_pretrained(tmp_path / "vae")
    image = torch.rand(2, 3, 32, 32)
    expected = LatentCodec(vae).encode(image)
    loaded = LatentCodec(str(tmp_path / "vae"))
    torch.testing.assert_close(loaded.encode(image), expected, rtol=0, atol=0)
    assert loaded.scaling_factor == 0.5


def test_codec_scales_the_posterior_mean_and_decodes_to_unit_range():
    vae = tiny_vae(scaling_factor=0.25)
    codec = LatentCodec(vae)
    image = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        mean = vae.encode(image * 2 - 1).latent_dist.mean
    latents = codec.encode(image)
    torch.testing.assert_close(latents, mean * 0.25)
    assert codec.downsampling == 2 and latents.shape == (2, 4, 16, 16)
    decoded = codec.decode(latents)
    with torch.no_grad():
        expected = ((vae.decode(mean).sample + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(decoded, expected)
    assert decoded.min() >= 0 and decoded.max() <= 1
    # raw: the decoder's [-1, 1] output mapped to [0, 1] units without clamping (the DeCo-Diff reference's maps)
    latents = latents * 20  # far outside the training range: the decoder overshoots
    with torch.no_grad():
        raw = (vae.decode(latents / 0.25).sample + 1) / 2
    assert raw.min() < 0 or raw.max() > 1
    torch.testing.assert_close(codec.decode(latents, clamp=False), raw)


def test_codec_stays_frozen_and_in_eval_mode():
    codec = LatentCodec(tiny_vae())
    codec.train()
    assert not codec.vae.training
    assert not any(p.requires_grad for p in codec.parameters())


def test_codec_runs_in_float32_under_autocast():
    codec = LatentCodec(tiny_vae())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        latents = codec.encode(torch.rand(1, 3, 32, 32))
        image = codec.decode(latents)
    assert latents.dtype == torch.float32 and image.dtype == torch.float32


def test_missing_local_folder_says_how_to_provide_weights_offline(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no autoencoder at .*nowhere.*configs/autoencoder"):
        load_autoencoder(str(tmp_path / "nowhere"))


def test_folder_without_config_is_rejected(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_autoencoder(tmp_path / "empty")


def test_unreachable_hub_id_says_how_to_work_offline(monkeypatch):
    import huggingface_hub.constants

    # huggingface_hub reads HF_HUB_OFFLINE at import: set the constant it consults, so that the test never reaches
    # the network (on a machine with internet it would download the VAE; here it would retry DNS for 23 s)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match=r"stabilityai/sd-vae-ft-ema.*save_pretrained"):
        load_autoencoder("stabilityai/sd-vae-ft-ema")
