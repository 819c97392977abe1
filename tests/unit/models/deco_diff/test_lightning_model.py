import shutil

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import EMAWeightAveraging

from anomaly_diff.data.samples import UNKNOWN_CATEGORY
from anomaly_diff.diffusion.deviation import corrupt, deviation_target
from anomaly_diff.diffusion.masks import sample_patch_corruption
from anomaly_diff.models.components.feature_autoencoder import FeatureAutoencoder
from anomaly_diff.models.deco_diff import DeCoDiff
from anomaly_diff.models.deco_diff.torch_model import DeCoDiffOutput

CATEGORIES = ["brick", "coffee"]


def make_model(autoencoder_dir, **kwargs):
    torch.manual_seed(0)
    settings = dict(unet="tiny", patch_sizes=(1, 2, 4), patch_size_probs=(0.4, 0.3, 0.3), reverse_steps=3)
    return DeCoDiff(categories=CATEGORIES, autoencoder=str(autoencoder_dir), **{**settings, **kwargs})


def loader(make_batch, n=4, size=64):
    batch = make_batch(["coffee", "brick"] * (n // 2), size=size)
    samples = [{k: (v[i] if not isinstance(v, list) else v[i]) for k, v in batch.items()} for i in range(n)]
    return torch.utils.data.DataLoader(samples, batch_size=2)


def fit(model, tmp_path, make_batch, steps=1, **trainer_kwargs):
    settings = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer = Trainer(max_steps=steps, default_root_dir=tmp_path, **{**settings, **trainer_kwargs})
    trainer.fit(model, loader(make_batch))
    return trainer


def test_loss_is_the_mse_to_the_deviation_target(tiny_autoencoder_dir, make_batch):
    model = make_model(tiny_autoencoder_dir)
    batch = make_batch(["coffee", "brick", "coffee"])
    torch.manual_seed(3)
    loss = model.compute_losses(batch)["loss"]

    # replay the same draws by hand: encode, corrupt, target, and the class indices by name (coffee = 1)
    torch.manual_seed(3)
    latents = model.model.codec.encode(batch["image"])
    corruption = sample_patch_corruption(latents, (1, 2, 4), (0.4, 0.3, 0.3), 0.7, 0.3)
    t = torch.randint(0, 10, (3,))
    noisy = corrupt(latents, corruption.noise, corruption.keep, model.model.schedule, t)
    target = deviation_target(latents, corruption.noise, corruption.keep, model.model.schedule, t)
    prediction = model.model(noisy, t, torch.tensor([1, 0, 1]))
    assert loss.item() == pytest.approx((prediction - target).square().mean().item(), rel=1e-5)


def test_training_updates_the_denoiser_but_not_the_autoencoder(tiny_autoencoder_dir, tmp_path, make_batch):
    model = make_model(tiny_autoencoder_dir)
    codec_before = {k: v.clone() for k, v in model.model.codec.state_dict().items()}
    unet_before = {k: v.clone() for k, v in model.model.unet.state_dict().items()}
    fit(model, tmp_path, make_batch, steps=2)
    assert all(torch.equal(codec_before[k], v) for k, v in model.model.codec.state_dict().items())
    assert any(not torch.equal(unet_before[k], v) for k, v in model.model.unet.state_dict().items())
    assert not model.model.codec.vae.training


def test_checkpoint_round_trip_gives_identical_maps(tiny_autoencoder_dir, tmp_path, make_batch):
    model = make_model(tiny_autoencoder_dir)
    trainer = fit(model, tmp_path, make_batch)
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    restored = DeCoDiff.load_from_checkpoint(tmp_path / "model.ckpt").eval()
    model.eval()
    batch = make_batch(["brick", "coffee"], seed=5)
    first, second = model.predict_anomaly(batch), restored.predict_anomaly(batch)
    assert torch.equal(first["anomaly_map"], second["anomaly_map"])
    assert torch.equal(first["pred_score"], second["pred_score"])
    assert restored.categories == CATEGORIES and restored.model.timesteps == [8, 4, 0]


@pytest.mark.parametrize("kind", ["kl", "feature"])
def test_checkpoint_loads_without_the_autoencoder_folder(kind, tiny_autoencoder_dir, tmp_path, make_batch):
    """The checkpoint holds the autoencoder's architecture and weights: folder deleted, file moved, same maps."""
    folder = tmp_path / "autoencoder"
    if kind == "kl":
        shutil.copytree(tiny_autoencoder_dir, folder)
    else:
        torch.manual_seed(1)
        feature_autoencoder = FeatureAutoencoder(latent_channels=4, block_out_channels=(8, 8, 8, 8), norm_num_groups=4)
        feature_autoencoder.save_pretrained(folder)
    model = make_model(folder)
    trainer = fit(model, tmp_path, make_batch)
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    shutil.rmtree(folder)
    moved = tmp_path / "elsewhere" / "model.ckpt"
    moved.parent.mkdir()
    (tmp_path / "model.ckpt").rename(moved)
    restored = DeCoDiff.load_from_checkpoint(moved).eval()
    assert type(restored.model.codec.vae) is type(model.model.codec.vae)
    assert restored.loaded_files == {}  # nothing was read but the checkpoint
    model.eval()
    batch = make_batch(["brick", "coffee"], seed=5)
    first, second = model.predict_anomaly(batch), restored.predict_anomaly(batch)
    assert torch.equal(first["anomaly_map"], second["anomaly_map"])
    assert torch.equal(first["pred_score"], second["pred_score"])


def test_detect_returns_maps_scores_and_reconstructions(tiny_autoencoder_dir, make_batch):
    model = make_model(tiny_autoencoder_dir).eval()
    batch = make_batch(["brick", "coffee"])
    out = model.detect(batch)
    assert set(out._fields) == set(DeCoDiffOutput._fields)
    assert out.reconstruction.shape == (2, 3, 64, 64) and out.anomaly_map.shape == (2, 64, 64)
    prediction = model.predict_step(batch, 0)
    assert set(prediction) == {"anomaly_map", "pred_score"}
    torch.testing.assert_close(prediction["anomaly_map"], out.anomaly_map)


def test_ema_weights_are_what_is_evaluated_and_saved(tiny_autoencoder_dir, tmp_path, make_batch):
    model = make_model(tiny_autoencoder_dir, ema_decay=0.5)
    (callback,) = model.configure_callbacks()
    assert isinstance(callback, EMAWeightAveraging)
    trainer = fit(model, tmp_path, make_batch, steps=3, enable_checkpointing=True)
    checkpoint = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=False)
    assert "current_model_state" in checkpoint, "the checkpoint does not hold the EMA weights"
    key = "model.unet.conv_out.weight"
    assert not torch.equal(checkpoint["state_dict"][key], checkpoint["current_model_state"][key])
    # after fit the module holds the averaged weights, which the test after fit then evaluates
    torch.testing.assert_close(model.state_dict()[key], checkpoint["state_dict"][key])


def test_invalid_settings_are_named(tiny_autoencoder_dir, make_batch):
    with pytest.raises(ValueError, match="model.max_mask_ratio must lie in"):
        make_model(tiny_autoencoder_dir, max_mask_ratio=1.5)
    with pytest.raises(ValueError, match="model.ema_decay"):
        make_model(tiny_autoencoder_dir, ema_decay=1.0)
    with pytest.raises(FileNotFoundError, match="no autoencoder at"):
        make_model("/nonexistent/autoencoder")
    model = make_model(tiny_autoencoder_dir, patch_sizes=(16,), patch_size_probs=(1.0,))
    with pytest.raises(ValueError, match="do not divide the 8x8 latent grid"):
        model.compute_losses(make_batch(["brick"]))


def test_latent_cache_encodes_each_image_once(tiny_autoencoder_dir, monkeypatch, make_batch):
    model = make_model(tiny_autoencoder_dir, cache_latents=True)
    codec = model.model.codec
    encoded_counts = []
    original = codec.encode
    monkeypatch.setattr(codec, "encode", lambda image: encoded_counts.append(len(image)) or original(image))
    batch = make_batch(["brick", "coffee", "brick"])
    first = model.encode_cached(batch)
    torch.testing.assert_close(first, original(batch["image"]))
    again = model.encode_cached(batch)
    assert torch.equal(first, again) and encoded_counts == [3]
    # a batch with one unseen image encodes only that one
    mixed = make_batch(["brick", "coffee", "brick"])
    mixed["path"] = ["0.png", "new.png", "2.png"]
    latents = model.encode_cached(mixed)
    assert encoded_counts == [3, 1]
    torch.testing.assert_close(latents[1], original(mixed["image"][1:2])[0])
    model.compute_losses(batch)
    assert encoded_counts == [3, 1]


def test_detect_conditions_on_the_predicted_category_where_there_is_none_or_where_asked(
    tiny_autoencoder_dir, make_batch, monkeypatch
):
    model = make_model(tiny_autoencoder_dir).eval()
    monkeypatch.setattr(model.category_classifier, "forward", lambda images: torch.ones(len(images), dtype=torch.long))
    batch = make_batch(["brick", "brick"])
    batch["category"] = ["brick", UNKNOWN_CATEGORY]
    out = model.predict_step(batch, 0)
    assert model.batch_categories(batch) == ["brick", "coffee"]
    assert model.category_sources(batch) == ["given", "predicted"]
    torch.testing.assert_close(out["anomaly_map"], model.model.detect(batch["image"], torch.tensor([0, 1])).anomaly_map)
    model.category_source = "predicted"
    predicted = model.model.detect(batch["image"], torch.tensor([1, 1])).anomaly_map
    torch.testing.assert_close(model.predict_anomaly(batch)["anomaly_map"], predicted)
    assert not torch.allclose(predicted[0], out["anomaly_map"][0])  # the class matters
