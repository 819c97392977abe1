from pathlib import Path

import pytest
import yaml

from tests.helpers.data import write_mvtec_ad


@pytest.fixture(scope="session")
def mvtec_root(tmp_path_factory) -> Path:
    """A tiny MVTec AD layout with categories a and b (4 train, 2 good and 4 defective test images each)."""
    return write_mvtec_ad(tmp_path_factory.mktemp("mvtec"), categories=("a", "b"), n_train=4, size=32)


@pytest.fixture
def tiny_config(tmp_path, mvtec_root) -> Path:
    """A config training a tiny autoencoder for one epoch on the MVTec fixture, run directory under tmp_path."""
    config = {
        "seed_everything": 0,
        "data": {
            "class_path": "anomaly_diff.data.MVTecAD",
            "init_args": {"root": str(mvtec_root), "image_size": 36, "crop_size": 32, "batch_size": 4},
        },
        "model": {
            "class_path": "anomaly_diff.models.autoencoder.Autoencoder",
            "init_args": {"block_out_channels": [8, 16], "norm_num_groups": 8},
        },
        "trainer": {
            "accelerator": "cpu",
            "max_epochs": 1,
            "enable_progress_bar": False,
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(tmp_path / "runs"), "name": "tiny"},
            },
        },
        "heatmaps": {"per_category": 1},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
