"""``anomaly-diff export``: tiny DeCoDiff and DRDCBase checkpoints exported through the command line, their artifacts
loaded and run on CPU, against the eager models' ``predict_anomaly`` on the same batch."""

import json

import pytest
import torch
from lightning.pytorch import Trainer

from anomaly_diff.commands import main
from anomaly_diff.export import DECO_DIFF, DRDC, DRDC_BASE, run_artifact
from anomaly_diff.models.components.feature_autoencoder import FeatureAutoencoder
from anomaly_diff.models.deco_diff import DeCoDiff
from anomaly_diff.models.drdc import DRDCBase
from tests.helpers.models import save_tiny_autoencoder

CATEGORIES = ["brick", "coffee", "grass"]
SIZE = 64
BATCH = 2
TOLERANCE = 1e-4
DRDC_BASE_TINY = dict(layers=(1, 2), output_stride=8, input_size=32, hidden_dim=16, num_heads=2, num_encoder_layers=1,
                      num_decoder_layers=1, feedforward_dim=32, neighbourhood=3, blur_sigma=1.0, top_k=3)


def save(module, path, class_path, crop_size=None):
    """Save ``module`` as a run's checkpoint would hold it: with the class path (and the data's crop size)."""
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["hyper_parameters"]["_class_path"] = class_path
    if crop_size is not None:
        checkpoint["datamodule_hyper_parameters"] = {"crop_size": crop_size}
    torch.save(checkpoint, path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    FeatureAutoencoder(latent_channels=4, block_out_channels=(8, 8, 8, 8), norm_num_groups=4).save_pretrained(
        root / "feature_autoencoder")
    settings = dict(unet="tiny", timesteps=(4, 2, 0), reverse_steps=None,
                    anomaly_map=dict(image_sigma=1.5, latent_sigma=0.5, fusion="arithmetic", score_top_k=5))
    feature = DeCoDiff(CATEGORIES, autoencoder=str(root / "feature_autoencoder"), **settings)
    kl = DeCoDiff(CATEGORIES, autoencoder=str(save_tiny_autoencoder(root / "kl_autoencoder")), **settings)
    base = DRDCBase(CATEGORIES, **DRDC_BASE_TINY)
    return {
        "deco_diff_feature": save(feature, root / "deco_feature.ckpt", DECO_DIFF, crop_size=SIZE),
        "deco_diff_kl": save(kl, root / "deco_kl.ckpt", DECO_DIFF),
        "drdc_base": save(base, root / "drdc_base.ckpt", DRDC_BASE),
    }


def batch():
    generator = torch.Generator().manual_seed(7)
    return {"image": torch.rand(BATCH, 3, SIZE, SIZE, generator=generator), "category": ["grass", "brick"],
            "path": [f"{i}.png" for i in range(BATCH)]}


@pytest.mark.parametrize(
    ("model", "format"),
    [
        # tracing the whole DeCo-Diff pipeline takes 15-90 s per case on 2 busy cores
        pytest.param("deco_diff_feature", "exported-program", marks=pytest.mark.slow),
        pytest.param("deco_diff_feature", "onnx", marks=pytest.mark.slow),
        pytest.param("deco_diff_feature", "torchscript", marks=pytest.mark.slow),
        pytest.param("deco_diff_kl", "exported-program", marks=pytest.mark.slow),  # ONNX: the feature case
        ("drdc_base", "exported-program"),
        ("drdc_base", "onnx"),
        ("drdc_base", "torchscript"),
    ],
)
def test_exported_maps_and_scores_match_the_eager_model(model, format, checkpoints, tmp_path, capsys):
    if format == "onnx":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    ckpt = checkpoints[model]
    output = tmp_path / f"{model}.artifact"
    args = ["export", "--ckpt_path", str(ckpt), "--format", format, "--output", str(output),
            "--batch_size", str(BATCH)]
    if model != "deco_diff_feature":  # that one has its data's crop size in the checkpoint
        args += ["--image_size", str(SIZE)]
    main(args)
    assert f"to {output}" in capsys.readouterr().out

    kind = DeCoDiff if model.startswith("deco") else DRDCBase
    eager = kind.load_from_checkpoint(ckpt).eval()
    data = batch()
    with torch.no_grad():
        expected = eager.predict_anomaly(data)
    class_index = eager.class_indices(data["category"])
    anomaly_map, pred_score = run_artifact(output, format, data["image"], class_index)
    assert anomaly_map.shape == (BATCH, SIZE, SIZE) and pred_score.shape == (BATCH,)
    assert (anomaly_map - expected["anomaly_map"]).abs().max() <= TOLERANCE
    assert (pred_score - expected["pred_score"]).abs().max() <= TOLERANCE
    # the class condition reaches DeCo-Diff's graph: other classes give other maps
    if model.startswith("deco"):
        other, _ = run_artifact(output, format, data["image"], (class_index + 1) % len(CATEGORIES))
        assert (other - anomaly_map).abs().max() > 10 * TOLERANCE

    record = json.loads((tmp_path / f"{output.name}.json").read_text())
    assert record["categories"] == CATEGORIES and record["format"] == format
    assert record["inputs"]["image"]["shape"] == [BATCH, 3, SIZE, SIZE]
    assert max(record["max_abs_difference_from_eager"].values()) <= TOLERANCE
    assert record["score_thresholds"] == [None] * len(CATEGORIES)  # never calibrated


def run_failing(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["export", *args])
    return exit_info.value.code, capsys.readouterr().err


def test_a_missing_checkpoint_is_one_line(tmp_path, capsys):
    code, err = run_failing(["--ckpt_path", str(tmp_path / "nowhere.ckpt")], capsys)
    assert code == 1
    assert err.strip().splitlines() == [
        f"anomaly-diff: error: MissingFileError: --ckpt_path {tmp_path / 'nowhere.ckpt'} does not exist; give a "
        "checkpoint file (<run dir>/checkpoints/*.ckpt)"
    ]


def test_an_unknown_format_is_a_usage_error(checkpoints, capsys):
    code, err = run_failing(["--ckpt_path", str(checkpoints["drdc_base"]), "--format", "tflite"], capsys)
    assert code == 2 and "invalid choice: 'tflite'" in err


def test_the_full_drdc_is_refused_with_the_reason(tmp_path, capsys):
    ckpt = tmp_path / "drdc.ckpt"
    torch.save({"hyper_parameters": {"_class_path": DRDC}}, ckpt)
    code, err = run_failing(["--ckpt_path", str(ckpt), "--image_size", "64"], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "ConfigError: the full DRDC cannot be exported" in err and "DRDCBase" in err


def test_a_checkpoint_without_its_class_or_size_says_which_option_gives_it(tmp_path, checkpoints, capsys):
    ckpt = tmp_path / "bare.ckpt"
    torch.save({"hyper_parameters": {}}, ckpt)
    code, err = run_failing(["--ckpt_path", str(ckpt)], capsys)
    assert code == 1 and "--model_class" in err
    code, err = run_failing(["--ckpt_path", str(checkpoints["drdc_base"])], capsys)
    assert code == 1 and "--image_size" in err


def test_an_existing_output_is_kept(tmp_path, checkpoints, capsys):
    output = tmp_path / "model.pt2"
    output.write_text("mine")
    code, err = run_failing(["--ckpt_path", str(checkpoints["drdc_base"]), "--output", str(output),
                             "--image_size", "64"], capsys)
    assert code == 1 and f"{output}; remove it or give another path" in err
    assert output.read_text() == "mine"


def test_onnx_without_its_packages_names_the_extra(checkpoints, monkeypatch, capsys):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else find_spec(name))
    code, err = run_failing(["--ckpt_path", str(checkpoints["drdc_base"]), "--format", "onnx"], capsys)
    assert code == 1 and "pip install anomaly-diff[export]" in err and "onnxscript" in err
