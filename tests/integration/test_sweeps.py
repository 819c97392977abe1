"""Every shipped W&B sweep (configs/sweeps/*.yaml) runs as an agent would run it, offline, at a tiny size.

For each sweep file one parameter set is sampled from its ``parameters`` (as the sweep controller does: a choice of
``values``, a draw from a ``distribution``), expanded the way ``wandb agent`` expands ``${args}`` (wandb's own
``create_sweep_command_args``: ``--<name>=<value>`` per parameter) and substituted into the file's ``command``, which
is then run in its own process from a working directory that holds the repository's ``configs/`` (the relative
paths of the command resolve as from the repository root) with ``WANDB_MODE=offline`` and ``WANDB_DIR`` in
``tmp_path``. Appended after it are only overrides that make the run tiny: the config's data set generated at 64 px
with one category and one test batch, one training step, and the prerequisites a sweep needs (DeCo-Diff's
autoencoder: a random tiny one; DRDC's stage checkpoints: both stage configs trained one step with tiny widths, in
the test's own process).
The offline W&B run must hold the sweep's metric and the resolved config with the sampled values.
"""

import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

from anomaly_diff.cli import main
from tests.helpers.models import save_tiny_autoencoder
from tests.helpers.wandb_runs import offline_run

REPO = Path(__file__).resolve().parents[2]
SWEEPS = sorted((REPO / "configs" / "sweeps").glob("*.yaml"))

TINY_DATA = [
    "--data.init_args.categories=[brick]", "--data.init_args.generated_size=64", "--data.init_args.image_size=64",
    "--data.init_args.crop_size=64", "--data.init_args.num_train=2", "--data.init_args.num_test_good=1",
    "--data.init_args.num_test_defective=1", "--data.init_args.batch_size=2", "--data.init_args.eval_batch_size=2",
    "--data.init_args.val_fraction=0",
]
ONE_STEP = [
    "--trainer.max_steps=1", "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=0",
    "--trainer.limit_test_batches=1", "--trainer.log_every_n_steps=1", "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


def sample(spec: dict, rng: random.Random):
    """One value of a sweep parameter, as W&B's random search draws it."""
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        return rng.choice(spec["values"])
    distribution = spec.get("distribution", "int_uniform" if isinstance(spec["min"], int) else "uniform")
    low, high = spec["min"], spec["max"]
    if distribution == "uniform":
        return rng.uniform(low, high)
    if distribution == "int_uniform":
        return rng.randint(low, high)
    if distribution == "log_uniform_values":
        return math.exp(rng.uniform(math.log(low), math.log(high)))
    raise NotImplementedError(f"distribution {distribution!r}: add it to this sampler")


def agent_command(sweep: dict, parameters: dict) -> list[str]:
    """The sweep's ``command`` with its macros replaced as ``wandb agent`` replaces them."""
    args = create_sweep_command_args({"args": {k: {"value": v} for k, v in parameters.items()}})["args"]
    command = []
    for part in sweep["command"]:
        if part == "${env}":
            command.append("/usr/bin/env")
        elif part == "${args}":
            command += args
        elif part in ("${program}", "anomaly-diff"):  # the console script, as the module of this interpreter
            command += [sys.executable, "-m", "anomaly_diff"]
        elif part == "${interpreter}":
            command.append(sys.executable)
        else:
            command.append(part)
    return command


def run(command: list[str], cwd: Path, env: dict[str, str]) -> None:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"


def prepare_deco_diff(config: dict, config_file: str, cwd: Path, env: dict[str, str]) -> None:
    """A random tiny 8x autoencoder where the config loads stage 1 from."""
    save_tiny_autoencoder(cwd / config["model"]["init_args"]["autoencoder"])


def prepare_drdc(config: dict, config_file: str, cwd: Path, env: dict[str, str]) -> None:
    """Both stage configs of the same data set trained one step, tiny, into the checkpoint folders they name."""
    stage_dir = Path(config_file).parent
    name = Path(config_file).name
    tiny = {
        "base": ["--model.init_args.hidden_dim=16", "--model.init_args.num_heads=2",
                 "--model.init_args.num_encoder_layers=1", "--model.init_args.num_decoder_layers=1",
                 "--model.init_args.feedforward_dim=32"],
        "refinement": ["--model.init_args.block_out_channels=[8,16]", "--model.init_args.attention=false"],
    }
    for stage, overrides in tiny.items():  # in this process: only the agent's command needs its own
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(cwd)
            main(["fit", "--config", str(stage_dir / stage / name), *TINY_DATA, *ONE_STEP, "--trainer.max_epochs=1",
                  *overrides, "--test_after_fit=false"])


PREPARE = {
    "anomaly_diff.models.deco_diff.DeCoDiff": prepare_deco_diff,
    "anomaly_diff.models.drdc.DRDC": prepare_drdc,
}


def nested(config: dict, dotted: str):
    for key in dotted.split("."):
        config = config[key]
    return config


@pytest.mark.slow
@pytest.mark.parametrize("sweep_file", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_sweep_runs_one_sampled_configuration_offline(sweep_file, tmp_path):
    sweep = yaml.safe_load(sweep_file.read_text())
    assert sweep["command"][-1] == "${args}" and "--config" in sweep["command"]
    config_file = sweep["command"][sweep["command"].index("--config") + 1]
    config = yaml.safe_load((REPO / config_file).read_text())
    cwd = tmp_path / "work"
    cwd.mkdir()
    (cwd / "configs").symlink_to(REPO / "configs")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env |= {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb_dir"), "WANDB_SILENT": "true",
            "WANDB_CONFIG_DIR": str(tmp_path / "wandb_config"), "WANDB_CACHE_DIR": str(tmp_path / "wandb_cache")}

    model = config["model"]["class_path"]
    assert model in PREPARE, f"{sweep_file.name}: no tiny setup for {model} in this test; add one to PREPARE"
    PREPARE[model](config, config_file, cwd, env)

    parameters = {key: sample(spec, random.Random(f"{sweep_file.stem}-{key}"))
                  for key, spec in sweep["parameters"].items()}
    run([*agent_command(sweep, parameters), *TINY_DATA, *ONE_STEP], cwd, env)

    logged = offline_run(tmp_path / "wandb_dir")
    keys = {key for row in logged["history"] for key in row}
    assert sweep["metric"]["name"] in keys
    resolved = logged["config"]["config"]
    assert resolved["model"]["class_path"] == model
    for key, value in parameters.items():
        assert nested(resolved, key) == (pytest.approx(value) if isinstance(value, float) else value), key
    assert any(f.startswith("media/table/test/metrics_table") for f in logged["files"])
