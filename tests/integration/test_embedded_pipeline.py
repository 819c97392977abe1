"""`make run`'s two stages chained at a tiny size through the run directories: the embedded autoencoder config
exports a FeatureAutoencoder into its run, a complete run becomes ``latest``, and the embedded DeCo-Diff config
trains in the latent space ``latest`` names, records which one it loaded, and tests; everything but the sizes is
the configs'."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from anomaly_diff.cli import main
from anomaly_diff.models.components.autoencoder import LatentCodec
from anomaly_diff.models.components.backbone import FeatureExtractor
from anomaly_diff.models.components.feature_autoencoder import FeatureAutoencoder
from anomaly_diff.utils.provenance import content_hash
from tests.helpers.runs import run_dirs

REPO = Path(__file__).resolve().parents[2]
TINY_DATA = ["--data.init_args.categories=[brick,paper]", "--data.init_args.generated_size=64",
             "--data.init_args.image_size=64", "--data.init_args.crop_size=64", "--data.init_args.num_train=4",
             "--data.init_args.num_test_good=1", "--data.init_args.num_test_defective=2",
             "--data.init_args.batch_size=4", "--data.init_args.val_fraction=0"]


def stage_one(tmp_path: Path, *extra: str) -> None:
    """`make run`'s stage-1 command at a tiny size (runs in tmp_path/runs)."""
    main(["fit", "--config", str(REPO / "configs/autoencoder/embedded.yaml"), f"--data.init_args.root={tmp_path}/e",
          *TINY_DATA, "--trainer.max_steps=1", "--test_after_fit=false", "--trainer.enable_progress_bar=false",
          f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}", *extra])


@pytest.mark.slow
def test_embedded_stages_chain_through_the_latest_autoencoder_run(tmp_path):
    stage_one(tmp_path, "--trainer.max_steps=2")
    runs = tmp_path / "runs" / "autoencoder" / "embedded"
    assert (runs / "latest").resolve() == runs / "version_0"
    exported = runs / "version_0" / "autoencoder"  # in its run, not in a shared cache
    codec = LatentCodec(str(exported))
    assert isinstance(codec.vae, FeatureAutoencoder) and codec.latent_channels == 4 and codec.downsampling == 8
    # the exported encoder is the pretrained EfficientNet-Lite0, untouched by training
    reference = FeatureExtractor(layers=(1, 2), output_stride=8)
    torch.testing.assert_close(codec.vae.encoder.state_dict(), reference.state_dict(), rtol=0, atol=0)

    main(["fit", "--config", str(REPO / "configs/deco_diff/embedded.yaml"), f"--data.init_args.root={tmp_path}/e",
          *TINY_DATA, "--trainer.max_steps=2", f"--model.init_args.autoencoder={runs / 'latest' / 'autoencoder'}",
          "--trainer.enable_progress_bar=false", f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}"])
    (run,) = run_dirs(tmp_path / "runs" / "deco_diff" / "embedded")
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["init_args"]["timesteps"] == [4, 2, 0]
    assert saved["model"]["init_args"]["anomaly_map"]["fusion"] == "arithmetic"
    metrics = json.loads((run / "metrics.json").read_text())
    assert sorted(metrics["per_category"]) == ["brick", "paper"]
    # provenance: the exact autoencoder behind the moving `latest` pointer, by content
    loaded = json.loads((run / "environment.json").read_text())["loaded"]["autoencoder"]
    assert loaded == {"path": str(runs / "latest" / "autoencoder"), "resolved": str(exported),
                      "sha256": content_hash(exported)}
    assert f"= `{exported}` (sha256 `{content_hash(exported)[:16]}`)" in (run / "report.md").read_text()

    # the DeCo-Diff checkpoint is self-contained: with the autoencoder deleted, testing the checkpoint the fit tested
    # (the config keeps last.ckpt only) gives the same metrics
    shutil.rmtree(exported)
    main(["test", "--config", str(REPO / "configs/deco_diff/embedded.yaml"), f"--data.init_args.root={tmp_path}/e",
          *TINY_DATA, f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
          "--trainer.enable_progress_bar=false", f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
          "--trainer.logger.init_args.name=alone"])
    (alone,) = run_dirs(tmp_path / "runs" / "alone")
    assert json.loads((alone / "metrics.json").read_text())["per_category"] == metrics["per_category"]


@pytest.mark.slow
def test_make_run_reuses_its_autoencoder_only_when_the_same_config_made_it(tmp_path, capsys):
    runs = tmp_path / "runs" / "autoencoder" / "embedded"
    stage_one(tmp_path, "--reuse_latest=true")  # make run, first time: nothing to reuse
    assert "Training: no complete earlier run" in capsys.readouterr().err
    first = content_hash(runs / "version_0" / "autoencoder")

    stage_one(tmp_path, "--reuse_latest=true")  # make run again: same config, nothing trained, no new run
    assert "made by the same config; nothing to train" in capsys.readouterr().err
    assert sorted(p.name for p in runs.iterdir()) == ["latest", "version_0"]

    # the README's example trains another autoencoder on fewer categories: a run of its own, which becomes latest
    stage_one(tmp_path, "--data.init_args.categories=[brick]")
    assert "latest -> version_1 (was version_0, which stays)" in capsys.readouterr().out
    assert content_hash(runs / "version_0" / "autoencoder") == first  # make run's autoencoder untouched

    stage_one(tmp_path, "--reuse_latest=true")  # make run notices, says why, and trains again
    err = capsys.readouterr().err
    assert "(version_1) was made by another config: data.init_args.categories: ['brick'] -> ['brick', 'paper']" in err
    assert (runs / "latest").resolve() == runs / "version_2"
    assert content_hash(runs / "version_0" / "autoencoder") == first
