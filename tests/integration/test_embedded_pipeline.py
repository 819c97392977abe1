"""`make run`'s two stages chained at a tiny size: the embedded autoencoder config exports a FeatureAutoencoder, and
the embedded DeCo-Diff config trains in its latent space and tests; everything but the sizes is the configs'."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from anomaly_diff.cli import main
from anomaly_diff.models.components.autoencoder import LatentCodec
from anomaly_diff.models.components.backbone import FeatureExtractor
from anomaly_diff.models.components.feature_autoencoder import FeatureAutoencoder

REPO = Path(__file__).resolve().parents[2]
TINY_DATA = ["--data.init_args.categories=[brick,paper]", "--data.init_args.generated_size=64",
             "--data.init_args.image_size=64", "--data.init_args.crop_size=64", "--data.init_args.num_train=4",
             "--data.init_args.num_test_good=1", "--data.init_args.num_test_defective=2",
             "--data.init_args.batch_size=4", "--data.init_args.val_fraction=0"]


@pytest.mark.slow
def test_embedded_stages_chain_through_the_exported_feature_autoencoder(tmp_path):
    data = [f"--data.init_args.root={tmp_path / 'embedded'}", *TINY_DATA]
    exported = tmp_path / "autoencoder"
    main(["fit", "--config", str(REPO / "configs/autoencoder/embedded.yaml"), *data, "--trainer.max_steps=2",
          f"--model.init_args.export_dir={exported}", "--test_after_fit=false", "--trainer.enable_progress_bar=false",
          f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}"])
    codec = LatentCodec(str(exported))
    assert isinstance(codec.vae, FeatureAutoencoder) and codec.latent_channels == 4 and codec.downsampling == 8
    # the exported encoder is the pretrained EfficientNet-Lite0, untouched by training
    reference = FeatureExtractor(layers=(1, 2), output_stride=8)
    torch.testing.assert_close(codec.vae.encoder.state_dict(), reference.state_dict(), rtol=0, atol=0)

    main(["fit", "--config", str(REPO / "configs/deco_diff/embedded.yaml"), *data, "--trainer.max_steps=2",
          f"--model.init_args.autoencoder={exported}", "--trainer.enable_progress_bar=false",
          f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}"])
    (run,) = (tmp_path / "runs" / "deco_diff" / "embedded").iterdir()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["init_args"]["timesteps"] == [4, 2, 0]
    assert saved["model"]["init_args"]["anomaly_map"]["fusion"] == "arithmetic"
    metrics = json.loads((run / "metrics.json").read_text())
    assert sorted(metrics["per_category"]) == ["brick", "paper"]
