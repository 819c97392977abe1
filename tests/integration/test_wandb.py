"""W&B logging through the command line, offline: configs/loggers/wandb.yaml added to a run or used alone.

Each run is its own process (``python -m anomaly_diff``) with ``WANDB_DIR`` in ``tmp_path`` and no W&B login or
``WANDB_MODE``, so the logger must go offline by itself; the offline run is read back from its ``.wandb`` log.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from anomaly_diff.loggers import WandbLogger, wandb_is_set_up
from anomaly_diff.utils.imports import MissingExtraError
from tests.helpers.configs import TINY_AUTOENCODER, write_tiny_config
from tests.helpers.data import write_mvtec_ad
from tests.helpers.runs import run_dirs
from tests.helpers.wandb_runs import offline_run

REPO = Path(__file__).resolve().parents[2]
LOGGER_FILE = REPO / "configs" / "loggers" / "wandb.yaml"


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment without W&B settings or credentials, W&B writing under ``tmp_path``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env |= {"WANDB_DIR": str(tmp_path / "wandb_dir"), "NETRC": str(tmp_path / "no-netrc"), "WANDB_SILENT": "true",
            "WANDB_CONFIG_DIR": str(tmp_path / "wandb_config"), "WANDB_CACHE_DIR": str(tmp_path / "wandb_cache")}
    return env | extra


@pytest.fixture
def tiny_run_config(tmp_path) -> Path:
    root = write_mvtec_ad(tmp_path / "data", categories=("a",), n_train=2, n_good=1, n_defect=1, size=32)
    model = {**TINY_AUTOENCODER, "init_args": {"block_out_channels": [8, 16], "norm_num_groups": 8}}
    return write_tiny_config(tmp_path / "tiny.yaml", root, model=model,
                             trainer={"max_epochs": None, "max_steps": 1, "log_every_n_steps": 1},
                             heatmaps={"per_category": 1})


@pytest.mark.parametrize("form", ["+=", "="])
def test_logger_file_logs_metrics_config_table_and_heatmaps_offline(tmp_path, tiny_run_config, form):
    result = subprocess.run(
        [sys.executable, "-m", "anomaly_diff", "fit", "--config", str(tiny_run_config),
         f"--trainer.logger{form}{LOGGER_FILE}"],
        cwd=REPO, env=clean_env(tmp_path), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    wandb_dir = tmp_path / "wandb_dir"
    run = offline_run(wandb_dir)  # offline without being told: one offline-run-* folder
    assert run["config"]["config"]["model"]["class_path"] == "anomaly_diff.models.autoencoder.Autoencoder"
    assert run["config"]["config"]["trainer"]["max_steps"] == 1
    logged = {key for row in run["history"] for key in row}
    assert {"train/loss", "test/image_AUROC", "test/pixel_AUPRC/a"} <= logged
    assert any(f.startswith("media/table/test/metrics_table") for f in run["files"])
    assert sum(f.startswith("media/images/test/heatmaps") for f in run["files"]) == 3  # good, crack, scratch
    table = json.loads(next((wandb_dir / "wandb").glob("offline-run-*/files/media/table/test/*.table.json"))
                       .read_text())
    assert table["columns"][0] == "category" and [row[0] for row in table["data"]] == ["a", "mean"]

    if form == "+=":  # the CSV logger stays first: the run directory is unchanged
        (run_dir,) = run_dirs(tmp_path / "runs" / "tiny")
    else:  # alone: the W&B logger's own run directory <WANDB_DIR>/<project>/<run id>
        (run_dir,) = run_dirs(wandb_dir / "anomaly-diff")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert table["data"][0][table["columns"].index("image_AUROC")] == pytest.approx(
        metrics["per_category"]["a"]["image_AUROC"])
    assert (run_dir / "config.yaml").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert len(list((run_dir / "heatmaps" / "a").glob("*.png"))) == 3


def test_offline_unless_wandb_mode_or_a_login(tmp_path, monkeypatch):
    for key in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert not wandb_is_set_up()
    assert WandbLogger(save_dir=str(tmp_path))._offline
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password secret\n")
    (tmp_path / "netrc").chmod(0o600)
    assert wandb_is_set_up()
    assert not WandbLogger(save_dir=str(tmp_path))._offline
    (tmp_path / "netrc").unlink()
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert not WandbLogger(save_dir=str(tmp_path))._offline  # W&B follows WANDB_MODE
    assert WandbLogger(offline=True, save_dir=str(tmp_path))._offline
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "w"))
    assert WandbLogger()._save_dir == str(tmp_path / "w")


def test_without_the_wandb_extra_the_logger_says_which_extra_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if wandb were not installed
    with pytest.raises(MissingExtraError) as error:
        WandbLogger(save_dir=str(tmp_path))
    assert str(error.value) == "W&B logging needs the wandb extra: pip install 'anomaly-diff[wandb]'"
