import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from anomaly_diff.models.autoencoder import Autoencoder
from anomaly_diff.models.components.autoencoder import LatentCodec


def tiny(**kwargs) -> Autoencoder:
    torch.manual_seed(0)
    return Autoencoder(["a", "b"], **{"block_out_channels": (8, 16), "norm_num_groups": 8, **kwargs})


def batch(n=2, size=16):
    torch.manual_seed(1)
    return {"image": torch.rand(n, 3, size, size), "label": torch.zeros(n, dtype=torch.long)}


def test_loss_is_l1_plus_weighted_kl_per_pixel():
    model = tiny(kl_weight=0.5).eval()
    b = batch()
    losses = model.compute_losses(b)
    posterior = model.vae.encode(b["image"] * 2 - 1).latent_dist
    recon = model.vae.decode(posterior.mode()).sample
    l1 = F.l1_loss(recon, b["image"] * 2 - 1)
    kl = posterior.kl().mean() / (3 * 16 * 16)
    torch.testing.assert_close(losses["l1"], l1)
    torch.testing.assert_close(losses["kl"], kl)
    torch.testing.assert_close(losses["loss"], l1 + 0.5 * kl)


def test_anomaly_map_is_blurred_max_rgb_error():
    model = tiny(blur_sigma=1.0).eval()
    b = batch()
    out = model.predict_anomaly(b)
    recon = model.vae.decode(model.vae.encode(b["image"] * 2 - 1).latent_dist.mode()).sample
    error = (recon - (b["image"] * 2 - 1)).abs().amax(1).detach().numpy()
    # scipy's default border ("reflect") is the shared blur's (see models/components/anomaly_map.py)
    expected = torch.from_numpy(np.stack([gaussian_filter(e, sigma=1.0) for e in error]))
    torch.testing.assert_close(out["anomaly_map"], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["pred_score"], expected.flatten(1).amax(1))


def test_scaling_factor_is_inverse_latent_std_and_survives_export(tmp_path):
    model = tiny().eval()
    loader = [batch(3), batch(2)]
    factor = model.fit_scaling_factor(loader)
    with torch.no_grad():
        means = torch.cat([model.vae.encode(b["image"] * 2 - 1).latent_dist.mean for b in loader]).double()
    assert factor == pytest.approx(1 / means.std(unbiased=False).item(), rel=1e-6)
    model.vae.save_pretrained(tmp_path)
    assert LatentCodec(str(tmp_path)).scaling_factor == pytest.approx(factor)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"kl_weight": -1}, "kl_weight"), ({"blur_sigma": -1}, "blur_sigma"), ({"norm_num_groups": 3}, "norm_num_groups")],
)
def test_invalid_hyper_parameters_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny(**kwargs)


def test_training_uses_random_crops_of_the_images():
    model = tiny(train_crop_size=8).train()
    image = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).reshape(2, 3, 16, 16)
    crops = model.random_crops(image)
    assert crops.shape == (2, 3, 8, 8)
    for crop, full in zip(crops, image, strict=True):
        top, left = divmod(int(crop[0, 0, 0].item()) - int(full[0, 0, 0].item()), 16)
        torch.testing.assert_close(crop, full[:, top : top + 8, left : left + 8])
    assert model.eval().compute_losses(batch())["l1"].shape == ()


def test_crop_size_must_fit_the_downsampling():
    with pytest.raises(ValueError, match="train_crop_size=7 must be a positive multiple of 2"):
        tiny(train_crop_size=7)


def test_pretrained_encoder_stays_frozen_while_the_decoder_learns():
    torch.manual_seed(0)
    model = Autoencoder(["a"], encoder="pretrained", block_out_channels=(8, 8, 8, 8), norm_num_groups=4,
                        latent_channels=None)
    encoder_before = {k: v.clone() for k, v in model.vae.encoder.state_dict().items()}
    decoder_before = {k: v.clone() for k, v in model.vae.decoder.state_dict().items()}
    optimiser = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    losses = model.compute_losses(batch(2, 32))
    # deterministic encoder: the loss is the L1 of the reconstruction, no KL
    assert losses["kl"].item() == 0 and losses["loss"].item() == losses["l1"].item()
    losses["loss"].backward()
    optimiser.step()
    assert all(torch.equal(v, model.vae.encoder.state_dict()[k]) for k, v in encoder_before.items())
    assert any(not torch.equal(v, model.vae.decoder.state_dict()[k]) for k, v in decoder_before.items())


def test_kl_encoder_needs_latent_channels():
    with pytest.raises(ValueError, match="latent_channels must be set for encoder 'kl'"):
        tiny(latent_channels=None)
