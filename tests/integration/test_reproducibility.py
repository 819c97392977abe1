"""Reproducible runs: the same seed gives the same metrics, and a run killed mid-fit resumes to the same result.

Each run is its own ``python -m anomaly_diff`` process on CPU in deterministic mode (``trainer.deterministic``),
training a tiny autoencoder (random crops and sampled latents, so the random state matters) on a tiny MVTec AD
layout, then testing it.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers.data import write_mvtec_ad
from tests.helpers.runs import run_dirs

REPO = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path, root: Path, max_epochs: int = 2, slow: float = 0.0) -> Path:
    config = {
        "seed_everything": 7,
        "data": {
            "class_path": "anomaly_diff.data.MVTecAD",
            "init_args": {"root": str(root), "image_size": 32, "crop_size": 32, "batch_size": 2, "val_fraction": 0.2},
        },
        "model": {
            "class_path": "anomaly_diff.models.autoencoder.Autoencoder",
            "init_args": {"block_out_channels": [8, 8], "norm_num_groups": 8, "train_crop_size": 16},
        },
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "deterministic": True,
            "max_epochs": max_epochs,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(tmp_path / "runs"), "name": "tiny"},
            },
            "callbacks": [{"class_path": "tests.helpers.callbacks.SlowEpochs", "init_args": {"seconds": slow}}],
        },
        "heatmaps": {"per_category": 0},
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """One category: 5 training normals (4 train, 1 val), 1 normal and 2 defective test images, 32x32."""
    return write_mvtec_ad(tmp_path_factory.mktemp("mvtec"), categories=("a",), n_train=5, n_good=1, n_defect=1)


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "anomaly_diff", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _cli(*args: str) -> None:
    result = subprocess.run(_command(*args), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def _newest_run(tmp_path: Path) -> Path:
    return max(run_dirs(tmp_path / "runs" / "tiny"), key=lambda path: int(path.name.split("_")[1]))


def test_same_seed_gives_identical_metrics_and_the_run_records_seed_and_versions(tmp_path, data_root):
    metrics = []
    for attempt in ("first", "second"):
        out = tmp_path / attempt
        _cli("fit", "--config", str(_config(out, data_root)))
        run = _newest_run(out)
        metrics.append((run / "metrics.json").read_text())
        assert yaml.safe_load((run / "config.yaml").read_text())["seed_everything"] == 7
        environment = json.loads((run / "environment.json").read_text())
        assert environment["seed"] == 7 and environment["deterministic_algorithms"] is True
        assert environment["torch"] == torch.__version__ and environment["packages"]["torch"] in torch.__version__
        assert {"lightning", "numpy", "anomaly-diff"} <= environment["packages"].keys()
    assert json.loads(metrics[0])["per_category"]["a"]["image_AUROC"] is not None
    assert metrics[0] == metrics[1]


@pytest.mark.slow
def test_fit_killed_after_a_checkpoint_resumes_to_the_uninterrupted_result(tmp_path, data_root):
    """Default layout (checkpoints inside each run directory): ``--ckpt_path last`` finds the killed run's."""
    epochs = 4
    reference = tmp_path / "reference"
    _cli("fit", "--config", str(_config(reference, data_root, epochs)))

    crashed = tmp_path / "crashed"
    config = _config(crashed, data_root, epochs, slow=2.0)
    first_last = crashed / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    process = subprocess.Popen(_command("fit", "--config", str(config)), cwd=REPO, env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not first_last.is_file():
            assert process.poll() is None, "the run ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.05)
        time.sleep(0.5)  # inside the next epoch's 2 s pause: the checkpoint is complete, the run not finished
        assert process.poll() is None, "the run finished before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    killed = torch.load(first_last, weights_only=True, map_location="cpu")
    assert killed["epoch"] < epochs - 1
    assert not (first_last.parents[1] / "metrics.json").exists()

    _cli("fit", "--config", str(config), "--ckpt_path", "last")
    final = {}
    for name, out in (("reference", reference), ("resumed", crashed)):
        run = _newest_run(out)
        checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
        final[name] = (checkpoint["epoch"], checkpoint["global_step"], json.loads((run / "metrics.json").read_text()))
    assert _newest_run(crashed).name == "version_1"
    # It resumed (a fresh start with the same seed would give the same result too): it logged only later steps.
    with (_newest_run(crashed) / "metrics.csv").open() as file:
        steps = [int(row["step"]) for row in csv.DictReader(file) if row.get("train/loss")]
    assert steps and min(steps) >= killed["global_step"]
    assert final["resumed"][:2] == final["reference"][:2]
    assert final["resumed"][0] == epochs - 1
    assert final["resumed"][2] == final["reference"][2]
