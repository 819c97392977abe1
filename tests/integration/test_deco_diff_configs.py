"""The shipped DeCo-Diff configs: each paper-scale config trains one step and tests one batch on CPU.

The data and the autoencoder are swapped for tiny stand-ins (a fixture in the data set's real layout, a random 8x
AutoencoderKL: the pretrained one cannot be downloaded here); everything else, including 288 -> 256 px images, the
patch sizes, schedule, map settings, optimiser and LR scheduler, is the config's. The three configs are the same
but for their data and run name; they share the released UNet L (395M parameters): MVTec AD trains it at that size
for a step (about 50 s on one core), VisA and BTAD check their data wiring with UNet XS (the presets differ only in
width: tests/unit/models/deco_diff/test_torch_model.py). No run writes a checkpoint (UNet L's with its AdamW state
is 4.7 GB, and writing it took three quarters of the test's time; ``fit`` then tests the model in memory).
"""

import json
from pathlib import Path

import pytest
import yaml

from anomaly_diff.cli import main
from anomaly_diff.diffusion.schedule import resolve_chain
from tests.helpers.data import write_btad, write_mvtec_ad, write_visa_raw
from tests.helpers.models import save_tiny_autoencoder
from tests.helpers.runs import run_dirs

REPO = Path(__file__).resolve().parents[2]
CHECKPOINTS = ["--checkpoint.save_last=false", "--checkpoint.save_top_k=0"]  # none written
WRITERS = {"mvtec": write_mvtec_ad, "visa": write_visa_raw, "btad": write_btad}


@pytest.fixture(scope="module")
def autoencoder_dir(tmp_path_factory):
    return save_tiny_autoencoder(tmp_path_factory.mktemp("autoencoder"))


@pytest.mark.slow
@pytest.mark.parametrize("dataset", sorted(WRITERS))
def test_paper_config_trains_a_step_and_tests_a_batch(dataset, tmp_path, autoencoder_dir):
    root = WRITERS[dataset](tmp_path / "data", n_train=2, n_good=1, n_defect=1, size=40)
    unet = [] if dataset == "mvtec" else ["--model.init_args.unet=XS"]
    main(
        [
            "fit",
            "--config",
            str(REPO / "configs" / "deco_diff" / f"{dataset}.yaml"),
            f"--data.init_args.root={root}",
            "--data.init_args.batch_size=2",
            "--data.init_args.num_workers=0",
            "--data.init_args.val_fraction=0",
            f"--model.init_args.autoencoder={autoencoder_dir}",
            *unet,
            *CHECKPOINTS,
            "--trainer.max_steps=1",
            "--trainer.accumulate_grad_batches=1",
            "--trainer.limit_test_batches=1",
            "--trainer.enable_progress_bar=false",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
        ]
    )
    (run,) = run_dirs(tmp_path / "runs" / "deco_diff" / dataset)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["init_args"]["patch_sizes"] == [1, 2, 4, 8, 16]
    assert saved["data"]["init_args"]["crop_size"] == 256
    assert saved["model"]["init_args"]["unet"] == ("L" if dataset == "mvtec" else "XS")
    # the reference's evaluation chain (--reverse-steps 5 of diffusion_steps 10)
    assert saved["model"]["init_args"]["reverse_steps"] == 5 and saved["model"]["init_args"]["timesteps"] is None
    assert resolve_chain(10, 5, None) == [8, 6, 4, 2, 0]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["per_category"], "the test batch produced no metrics"
