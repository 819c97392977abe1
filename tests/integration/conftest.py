from pathlib import Path

import pytest

from tests.helpers.configs import TINY_AUTOENCODER, write_tiny_config
from tests.helpers.data import write_mvtec_ad


@pytest.fixture(scope="session")
def mvtec_root(tmp_path_factory) -> Path:
    """A tiny MVTec AD layout with categories a and b (4 train, 2 good and 4 defective test images each)."""
    return write_mvtec_ad(tmp_path_factory.mktemp("mvtec"), categories=("a", "b"), n_train=4, size=32)


@pytest.fixture
def tiny_config(tmp_path, mvtec_root) -> Path:
    """A config training a tiny autoencoder for one epoch on the MVTec fixture, run directory under tmp_path."""
    return write_tiny_config(
        tmp_path / "tiny.yaml",
        mvtec_root,
        data={"image_size": 36, "batch_size": 4, "val_fraction": 0.1},
        model={**TINY_AUTOENCODER, "init_args": {"block_out_channels": [8, 16], "norm_num_groups": 8}},
        heatmaps={"per_category": 1},
    )
