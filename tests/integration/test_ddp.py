"""Distributed and mixed-precision runs on CPU through the command line; the distributed ones in their own processes.

- ``fit`` + ``test`` with 2 gloo processes (``--trainer.strategy=ddp --trainer.devices=2``) gives exactly the test
  metrics, heatmaps and report of a 1-process ``test`` of the same checkpoint (run in the test's own process): 3 test
  images on 2 ranks make the DistributedSampler repeat one, and metrics, heatmaps and report drop the repeat by its
  sample id. Test batches hold one image, so every map is computed the same way in both runs. The thresholds
  calibrated on the validation images of both ranks are those of all validation images, and ``predict`` with 2
  processes writes the CSV of 1 process.
- A ``bf16-mixed`` training step of DeCo-Diff (tiny UNet and autoencoder) on CPU ends with a finite loss.
"""

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from anomaly_diff.cli import main
from anomaly_diff.data import MVTecAD
from anomaly_diff.models.autoencoder import Autoencoder
from anomaly_diff.models.base import CALIBRATION_BUFFERS
from tests.helpers.data import write_mvtec_ad
from tests.helpers.models import save_tiny_autoencoder
from tests.helpers.runs import run_dirs

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK",
                                                           "LOCAL_RANK", "NODE_RANK")}
    result = subprocess.run([sys.executable, "-m", "anomaly_diff", *args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(args)}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.mark.slow
def test_two_gloo_processes_give_the_metrics_of_one(tmp_path):
    root = write_mvtec_ad(tmp_path / "data", categories=("a",), n_train=4, n_good=1, n_defect=1, size=32)
    config = {
        "seed_everything": 0,
        "data": {"class_path": "anomaly_diff.data.MVTecAD",
                 "init_args": {"root": str(root), "image_size": 32, "crop_size": 32, "batch_size": 1,
                               "eval_batch_size": 1, "val_fraction": 0.5}},
        "model": {"class_path": "anomaly_diff.models.autoencoder.Autoencoder",
                  "init_args": {"block_out_channels": [8, 16], "norm_num_groups": 8}},
        "trainer": {"accelerator": "cpu", "max_epochs": 1, "enable_progress_bar": False,
                    "enable_model_summary": False,
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(tmp_path / "runs"), "name": "tiny"}}},
        "heatmaps": {"per_category": 1},  # rank zero writes them (no collective calls there)
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))

    cli("fit", "--config", str(path), "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu",
        f"--checkpoint.dirpath={tmp_path / 'checkpoints'}")
    (ddp_run,) = run_dirs(tmp_path / "runs" / "tiny")
    (best,) = (tmp_path / "checkpoints").glob("epoch*.ckpt")  # the checkpoint the fit's test loaded
    assert torch.load(best, map_location="cpu", weights_only=False)["global_step"] == 1

    main(["test", "--config", str(path), "--ckpt_path", str(best), "--trainer.devices=1"])  # in this process
    single_run = max(run_dirs(tmp_path / "runs" / "tiny"), key=lambda p: p.stat().st_mtime)
    assert single_run != ddp_run

    ddp = json.loads((ddp_run / "metrics.json").read_text())
    single = json.loads((single_run / "metrics.json").read_text())
    assert list(ddp["per_category"]) == ["a"]
    assert ddp == single
    assert 0 < single["per_category"]["a"]["image_AUROC"] <= 1  # 1 normal + 2 defective: defined
    for folder in ("heatmaps", "report"):  # gathered from both ranks: the pictures of one process
        assert {p.relative_to(ddp_run): p.read_bytes() for p in (ddp_run / folder).rglob("*.png")} == {
            p.relative_to(single_run): p.read_bytes() for p in (single_run / folder).rglob("*.png")}
    assert len(list((ddp_run / "heatmaps" / "a").glob("*.png"))) == 3  # good, crack, scratch
    assert (ddp_run / "report.md").read_text() == (single_run / "report.md").read_text()

    # Thresholds: from the 2 validation images, one per rank, gathered.
    model = Autoencoder.load_from_checkpoint(best).eval()
    data = MVTecAD(**config["data"]["init_args"])
    data.setup("fit")
    with torch.no_grad():
        scores = [model.predict_anomaly(batch)["pred_score"].item() for batch in data.val_dataloader()]
    assert len(scores) == 2
    assert model.score_thresholds.item() == pytest.approx(np.quantile(scores, 0.99), rel=1e-5)

    # predict on 2 processes: every image once, the CSV of 1 process (this one).
    outputs = {}
    for devices in (2, 1):
        out = tmp_path / f"predict{devices}"
        args = ["predict", "--config", str(path), "--ckpt_path", str(best), f"--trainer.devices={devices}",
                *(["--trainer.strategy=ddp"] if devices > 1 else []), f"--data.path={root / 'a' / 'test'}",
                "--data.categories=[a]", f"--trainer.logger.init_args.save_dir={out}"]
        if devices > 1:
            cli(*args)
        else:
            main(args)
        (run,) = run_dirs(out / "tiny")
        outputs[devices] = (run / "predictions.csv").read_text()
    assert outputs[2] == outputs[1] and len(outputs[1].splitlines()) == 1 + 3


def test_bf16_mixed_training_step_of_deco_diff_has_a_finite_loss(tmp_path):
    autoencoder = save_tiny_autoencoder(tmp_path / "autoencoder")
    main(["fit", "--config", str(REPO / "configs" / "deco_diff" / "embedded.yaml"),
        f"--data.init_args.root={tmp_path / 'embedded'}", "--data.init_args.categories=[brick]",
        "--data.init_args.generated_size=64", "--data.init_args.image_size=64", "--data.init_args.crop_size=64",
        "--data.init_args.num_train=2", "--data.init_args.num_test_good=1", "--data.init_args.num_test_defective=1",
        "--data.init_args.batch_size=2", "--data.init_args.val_fraction=0",
        f"--model.init_args.autoencoder={autoencoder}", "--model.init_args.unet=tiny",
        "--trainer.precision=bf16-mixed", "--trainer.accelerator=cpu", "--trainer.max_steps=1",
        "--trainer.log_every_n_steps=1", "--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false",
        "--test_after_fit=false", f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}"])
    (run_dir,) = run_dirs(tmp_path / "runs" / "deco_diff" / "embedded")
    rows = [row for row in csv.DictReader((run_dir / "metrics.csv").open()) if row.get("train/loss")]
    assert len(rows) == 1 and math.isfinite(float(rows[0]["train/loss"]))
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 1
    weights = {k: v for k, v in checkpoint["state_dict"].items() if k not in CALIBRATION_BUFFERS}  # NaN: no validation
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["trainer"]["precision"] == "bf16-mixed"
