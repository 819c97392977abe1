import shutil

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer

from anomaly_diff.data.samples import UNKNOWN_CATEGORY
from anomaly_diff.models.components.anomaly_map import gaussian_blur
from anomaly_diff.models.drdc import DRDC, DRDCBase, DRDCRefinement, FusionConfig, InpaintingConfig
from anomaly_diff.models.drdc.base_model import BaseReconstructor
from anomaly_diff.models.drdc.fusion import aggregate_refinement, fuse

CATEGORIES = ["brick", "coffee"]
BASE = dict(layers=(1, 2), output_stride=8, input_size=32, hidden_dim=16, num_heads=2, num_encoder_layers=1,
            num_decoder_layers=1, feedforward_dim=32, neighbourhood=3, blur_sigma=1.0)
REFINEMENT = dict(block_out_channels=(8, 16), layers_per_block=1, attention=False, norm_num_groups=8,
                  inpainting=InpaintingConfig(num_timesteps=2, start_timestep=40, num_sets=2, patch_sizes=(4,),
                                              filter_size=3))


def batch(categories=("coffee", "brick"), size=16):
    torch.manual_seed(1)
    n = len(categories)
    return {"image": torch.rand(n, 3, size, size), "mask": torch.zeros(n, size, size),
            "label": torch.zeros(n, dtype=torch.long), "category": list(categories), "path": [f"{i}.png" for i in
            range(n)], "index": torch.arange(n)}


def save(module, path):
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return str(path)


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    root = tmp_path_factory.mktemp("drdc")
    torch.manual_seed(0)
    base = save(DRDCBase(CATEGORIES, **BASE), root / "base.ckpt")
    refinement = save(DRDCRefinement(CATEGORIES, **REFINEMENT), root / "refinement.ckpt")
    other = save(DRDCBase(["brick"], **BASE), root / "other.ckpt")
    return {"base": base, "refinement": refinement, "other": other}


def test_base_loss_is_the_feature_reconstruction_mse():
    model = DRDCBase(CATEGORIES, **BASE).eval()
    b = batch()
    reconstruction, features = model.model(b["image"])
    torch.testing.assert_close(model.compute_losses(b)["loss"], F.mse_loss(reconstruction, features))


def test_base_map_is_the_blurred_upsampled_error_and_the_score_its_maximum():
    model = DRDCBase(CATEGORIES, **BASE).eval()
    b = batch()
    with torch.no_grad():
        out = model.predict_anomaly(b)
        expected = gaussian_blur(BaseReconstructor.error_map(*model.model(b["image"]), (16, 16)), 1.0)
    torch.testing.assert_close(out["anomaly_map"], expected)
    torch.testing.assert_close(out["pred_score"], expected.flatten(1).amax(1))


def test_refinement_loss_is_the_epsilon_mse_with_label_dropout():
    model = DRDCRefinement(CATEGORIES, max_train_timestep=99, label_dropout=0.5, **REFINEMENT)
    b = batch(("coffee", "brick") * 4)
    torch.manual_seed(7)
    loss = model.compute_losses(b)["loss"]
    torch.manual_seed(7)
    timesteps = torch.randint(0, 100, (8,))
    noise = torch.randn(8, 3, 16, 16)
    dropped = torch.rand(8) < 0.5
    labels = torch.where(dropped, torch.full((8,), 2), torch.tensor([1, 0] * 4))
    x0 = b["image"] * 2 - 1
    a = model.model.schedule.alphas_cumprod[timesteps].reshape(-1, 1, 1, 1)
    expected = F.mse_loss(model.model(a.sqrt() * x0 + (1 - a).sqrt() * noise, timesteps, labels), noise)
    torch.testing.assert_close(loss, expected)
    assert 0 < dropped.sum() < 8


def test_refinement_alone_maps_are_the_aggregated_correction_heatmaps():
    model = DRDCRefinement(CATEGORIES, temporal="last", **REFINEMENT).eval()
    b = batch()
    torch.manual_seed(2)
    out = model.predict_anomaly(b)
    torch.manual_seed(2)
    heatmaps = model.model.refine(b["image"], torch.tensor([1, 0])).heatmaps
    torch.testing.assert_close(out["anomaly_map"], aggregate_refinement(heatmaps, "last"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"max_train_timestep": 1000}, "max_train_timestep=1000"), ({"label_dropout": 1.0}, "label_dropout"),
     ({"ema_decay": 1.0}, "ema_decay")],
)
def test_invalid_refinement_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DRDCRefinement(CATEGORIES, **{**REFINEMENT, **kwargs})


def test_combined_model_fuses_the_stage_maps_and_applies_its_test_time_settings(stages):
    inpainting = InpaintingConfig(num_timesteps=3, start_timestep=30, num_sets=4, patch_sizes=(2, 4), scales=(1, 2))
    model = DRDC(None, stages["base"], stages["refinement"], inpainting=inpainting,
                 fusion=FusionConfig(gamma=2.5, mode="additive")).eval()
    assert model.categories == CATEGORIES
    assert model.model.refiner.inpainting == inpainting
    b = batch()
    torch.manual_seed(4)
    output = model.detect(b)
    assert output.correction_maps.shape == (2, 2, 3, 2, 16, 16)
    base = DRDCBase.load_from_checkpoint(stages["base"], weights_only=False).eval()
    refinement = DRDCRefinement.load_from_checkpoint(stages["refinement"], weights_only=False).eval()
    refinement.model.inpainting = inpainting
    with torch.no_grad():
        base_map = base.predict_anomaly(b)["anomaly_map"]
        torch.manual_seed(4)
        corrections = refinement.model.refine(b["image"], torch.tensor([1, 0])).heatmaps
    torch.testing.assert_close(output.base_map, base_map)
    torch.testing.assert_close(output.correction_maps, corrections)
    torch.testing.assert_close(output.refinement_map, aggregate_refinement(corrections, "mean"))
    torch.testing.assert_close(output.anomaly_map, fuse(base_map, output.refinement_map, 2.5, "additive"))
    torch.testing.assert_close(output.pred_score, output.anomaly_map.flatten(1).amax(1))


def test_base_fusion_is_the_base_map_and_never_runs_the_refinement(stages, monkeypatch):
    model = DRDC(None, stages["base"], stages["refinement"], fusion=FusionConfig(mode="base")).eval()
    monkeypatch.setattr(model.model.refiner, "refine", lambda *args: pytest.fail("the refinement ran"))
    output = model.detect(batch())
    torch.testing.assert_close(output.anomaly_map, output.base_map)
    assert output.correction_maps.shape[1] == 0 and not output.refinement_map.any()


def test_combined_detect_returns_every_component(stages):
    inpainting = InpaintingConfig(num_timesteps=2, start_timestep=20)
    model = DRDC(CATEGORIES, stages["base"], stages["refinement"], inpainting=inpainting).eval()
    out = model.detect(batch())
    assert set(out._fields) == {"anomaly_map", "pred_score", "base_map", "refinement_map", "correction_maps"}
    assert out.correction_maps.shape == (2, 1, 2, 2, 16, 16)  # default scales (1, 2)
    assert set(model.predict_step(batch(), 0)) == set(model.test_step(batch(), 0)) == {"anomaly_map", "pred_score"}


def test_combined_model_conditions_images_without_a_category_on_the_predicted_one(stages):
    # Red "brick" and blue "coffee" images: the category predictor, fitted on them, tells them apart.
    torch.manual_seed(3)
    images = torch.rand(4, 3, 16, 16) * 0.2
    images[[0, 2], 0] += 0.8
    images[[1, 3], 2] += 0.8
    truth = ["brick", "coffee", "brick", "coffee"]
    model = DRDC(None, stages["base"], stages["refinement"],
                 inpainting=InpaintingConfig(num_timesteps=2, start_timestep=20)).eval()
    model.category_classifier.fit([{"image": images, "category": truth}], model.class_indices)
    given = {**batch(truth), "image": images}
    unknown = {**given, "category": [UNKNOWN_CATEGORY] * 4}
    assert model.batch_categories(unknown) == truth
    torch.manual_seed(8)
    expected = model.detect(given)
    torch.manual_seed(8)
    for got, want in zip(model.detect(unknown), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert model.category_sources(unknown) == ["predicted"] * 4


def test_combined_loss_is_the_sum_of_the_stage_losses(stages):
    model = DRDC(["coffee"], stages["base"], stages["refinement"]).eval()
    b = batch()
    torch.manual_seed(5)
    losses = model.compute_losses(b)
    base = DRDCBase.load_from_checkpoint(stages["base"], weights_only=False).eval()
    refinement = DRDCRefinement.load_from_checkpoint(stages["refinement"], weights_only=False).eval()
    torch.manual_seed(5)
    expected_base = base.compute_losses(b)["loss"]
    expected_refinement = refinement.compute_losses(b)["loss"]
    torch.testing.assert_close(losses["loss"], expected_base + expected_refinement)
    torch.testing.assert_close(losses["refinement_loss"], expected_refinement)


def test_a_combined_checkpoint_loads_and_scores_without_the_stage_files(stages, tmp_path):
    # The stage files are copied, the model built from the copies and saved, then the copies are deleted.
    for name in ("base", "refinement"):
        shutil.copy(stages[name], tmp_path / f"{name}.ckpt")
    inpainting = InpaintingConfig(num_timesteps=2, start_timestep=30, init="context", resample=2)
    model = DRDC(None, str(tmp_path / "base.ckpt"), str(tmp_path / "refinement.ckpt"), inpainting=inpainting,
                 fusion=FusionConfig(gamma=3.0)).eval()
    saved = save(model, tmp_path / "drdc.ckpt")
    (tmp_path / "base.ckpt").unlink()
    (tmp_path / "refinement.ckpt").unlink()
    loaded = DRDC.load_from_checkpoint(saved, weights_only=False).eval()
    assert loaded.model.refiner.inpainting == inpainting and loaded.model.fusion == FusionConfig(gamma=3.0)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, loaded.state_dict()[name], rtol=0, atol=0, equal_nan=True)
    b = batch()
    torch.manual_seed(6)
    expected = model.detect(b)
    torch.manual_seed(6)
    for got, want in zip(loaded.detect(b), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_combined_model_errors_are_named(stages, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model.base_checkpoint='.*missing.ckpt' does not exist.*drdc/base/"):
        DRDC(CATEGORIES, str(tmp_path / "missing.ckpt"), stages["refinement"])
    with pytest.raises(ValueError, match=r"categories \['brick'\] differ from .*\['brick', 'coffee'\]"):
        DRDC(CATEGORIES, stages["other"], stages["refinement"])
    with pytest.raises(ValueError, match=r"model.categories \['wood'\] are not among"):
        DRDC(["wood"], stages["base"], stages["refinement"])
    with pytest.raises(ValueError, match=r"start_timestep=1000 must lie in \[0, num_train_timesteps=1000\)"):
        DRDC(CATEGORIES, stages["base"], stages["refinement"], inpainting=InpaintingConfig(start_timestep=1000))


def test_base_feature_cache_gives_the_same_loss_and_extracts_each_image_once():
    plain = DRDCBase(CATEGORIES, **BASE).eval()
    cached = DRDCBase(CATEGORIES, cache_features=True, **BASE).eval()
    cached.load_state_dict(plain.state_dict())
    b = batch()
    calls = []
    extract = cached.model.extract
    cached.model.extract = lambda image: calls.append(len(image)) or extract(image)
    for _ in range(2):
        torch.testing.assert_close(cached.compute_losses(b)["loss"], plain.compute_losses(b)["loss"])
    assert calls == [2]
