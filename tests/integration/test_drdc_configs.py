"""Every DRDC config runs one training step and one test batch on CPU through the CLI, in this process.

The data is swapped for tiny 64 px fixtures in the config's own format (the embedded generator at 64 px, MVTec AD,
BTAD and VisA layouts). The embedded and MVTec AD configs run at their full model size, with their models, schedules
and test-time settings as the configs give them. The BTAD and VisA configs are the MVTec AD ones with another data
set (``test_btad_and_visa_configs_differ_from_mvtec_only_in_their_data``), so their runs check the data and
checkpoint wiring with both stages shrunk to tiny widths; the paper-size models are exercised once, on MVTec AD.
"""

import csv
import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from anomaly_diff.cli import main
from anomaly_diff.models.drdc import FusionConfig, InpaintingConfig
from anomaly_diff.utils.provenance import content_hash
from anomaly_diff.utils.settings import as_settings
from tests.helpers.data import write_btad, write_mvtec_ad, write_visa_raw

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs" / "drdc"
DATASETS = ["embedded", "mvtec", "btad", "visa"]
# The stage architectures of the BTAD and VisA runs (the MVTec AD configs' paper-size ones run once, on MVTec AD).
TINY = {
    "base": ["--model.init_args.input_size=64", "--model.init_args.hidden_dim=16", "--model.init_args.num_heads=2",
             "--model.init_args.num_encoder_layers=1", "--model.init_args.num_decoder_layers=1",
             "--model.init_args.feedforward_dim=32", "--model.init_args.neighbourhood=3"],
    "refinement": ["--model.init_args.block_out_channels=[8,16]", "--model.init_args.layers_per_block=1",
                   "--model.init_args.attention=false", "--model.init_args.norm_num_groups=8"],
}


def data_overrides(dataset: str, root: Path) -> list[str]:
    if dataset == "mvtec":
        write_mvtec_ad(root, n_train=3, n_good=1, n_defect=1, size=64)
    elif dataset == "btad":
        write_btad(root, n_train=3, n_good=1, n_defect=1, size=64)
    elif dataset == "visa":
        write_visa_raw(root, n_train=3, n_good=1, n_defect=1, size=64)
    overrides = [f"--data.init_args.root={root}", "--data.init_args.image_size=64", "--data.init_args.crop_size=64",
                 "--data.init_args.batch_size=2", "--data.init_args.eval_batch_size=1",
                 "--data.init_args.num_workers=0"]
    if dataset == "embedded":
        overrides += ["--data.init_args.generated_size=64", "--data.init_args.num_train=3",
                      "--data.init_args.num_test_good=1", "--data.init_args.num_test_defective=1"]
    return overrides


def run(config: Path, tmp_path: Path, name: str, data: list[str], *extra: str) -> Path:
    """``fit`` one step then test one batch through the command line, in this process, in ``tmp_path``.

    The configs' relative run paths (``runs/<name>``, the stage checkpoints the combined config loads through
    ``runs/drdc/<stage>/<dataset>/latest``) land in ``tmp_path``. Returns the new run directory (``latest``).
    """
    cli(tmp_path, "fit", "--config", str(config), *data, *extra, "--trainer.accelerator=cpu",
        "--trainer.max_epochs=1", "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=0",
        "--trainer.limit_test_batches=1", "--trainer.enable_model_summary=false")
    return (tmp_path / "runs" / name / "latest").resolve()


def cli(cwd: Path, *args: str) -> None:
    """``anomaly-diff <args>`` in this process with the working directory ``cwd`` and runs under ``cwd/runs``."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        main([*args, "--trainer.enable_progress_bar=false", "--trainer.logger.init_args.save_dir=runs"])


def check(run_dir: Path) -> dict:
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 1
    results = json.loads((run_dir / "metrics.json").read_text())
    assert len(results["per_category"]) == 1  # one test batch of one image
    return checkpoint["hyper_parameters"]


def assert_config_size(hparams: dict, stage: str, dataset: str, keys: tuple[str, ...]) -> None:
    """The embedded and MVTec AD runs trained the config's own architecture (BTAD and VisA: the tiny one)."""
    if dataset in ("btad", "visa"):
        return
    configured = yaml.safe_load((CONFIGS / stage / f"{dataset}.yaml").read_text())["model"]["init_args"]
    assert {key: list(hparams[key]) if isinstance(hparams[key], (list, tuple)) else hparams[key] for key in keys} == {
        key: configured[key] for key in keys}


@pytest.fixture(scope="module")
def stage_runs(tmp_path_factory):
    """Both stage configs of every data set, each trained one step in its own run; the embedded base twice."""
    runs = {}
    for dataset in DATASETS:
        tmp_path = tmp_path_factory.mktemp(dataset)
        data = data_overrides(dataset, tmp_path / "data")
        for stage in ("base", "refinement"):
            config = CONFIGS / stage / f"{dataset}.yaml"
            size = TINY[stage] if dataset in ("btad", "visa") else []
            runs[dataset, stage] = run(config, tmp_path, f"drdc/{stage}/{dataset}", data, *size)
        if dataset == "embedded":  # a second base run: the combined config must load it, and leave the first alone
            first = runs[dataset, "base"]
            runs[dataset, "first base"] = first, content_hash(first / "checkpoints" / "last.ckpt")
            runs[dataset, "base"] = run(CONFIGS / "base" / f"{dataset}.yaml", tmp_path, f"drdc/base/{dataset}", data)
        runs[dataset, "data"] = (tmp_path, data)
    return runs


def test_btad_and_visa_configs_differ_from_mvtec_only_in_their_data():
    """So their runs below may shrink the models: the paper-size models run with the MVTec AD configs."""
    def without_data(path: Path) -> dict:
        config = yaml.safe_load(path.read_text())
        text = json.dumps({key: value for key, value in config.items() if key != "data"})
        return json.loads(text.replace(path.stem, "<dataset>"))

    for dataset in ("btad", "visa"):
        for config in (Path(f"{dataset}.yaml"), Path("base", f"{dataset}.yaml"), Path("refinement", f"{dataset}.yaml")):
            mvtec = config.with_name("mvtec.yaml")
            assert without_data(CONFIGS / config) == without_data(CONFIGS / mvtec), config
            assert yaml.safe_load((CONFIGS / config).read_text())["data"].endswith(f"data/{dataset}.yaml")


@pytest.mark.slow
@pytest.mark.parametrize("dataset", DATASETS)
def test_base_config_trains_one_step_and_tests_one_batch(stage_runs, dataset):
    hparams = check(stage_runs[dataset, "base"])
    assert hparams["backbone"] == "tf_efficientnet_lite0"
    assert_config_size(hparams, "base", dataset, ("input_size", "hidden_dim", "num_encoder_layers"))


@pytest.mark.slow
@pytest.mark.parametrize("dataset", DATASETS)
def test_refinement_config_trains_one_step_and_tests_one_batch(stage_runs, dataset):
    hparams = check(stage_runs[dataset, "refinement"])
    assert hparams["num_train_timesteps"] == 1000
    assert_config_size(hparams, "refinement", dataset, ("block_out_channels", "layers_per_block"))


@pytest.mark.slow
@pytest.mark.parametrize("dataset", DATASETS)
def test_combined_config_fine_tunes_one_step_and_tests_one_batch(stage_runs, dataset, caplog):
    tmp_path, data = stage_runs[dataset, "data"]
    base, refinement = stage_runs[dataset, "base"], stage_runs[dataset, "refinement"]
    with caplog.at_level("INFO"):
        run_dir = run(CONFIGS / f"{dataset}.yaml", tmp_path, f"drdc/{dataset}", data)  # the config's stage paths
    hparams = check(run_dir)
    inpainting = as_settings(InpaintingConfig, hparams["inpainting"])  # a CLI run keeps the config's mapping
    assert inpainting.num_sets >= 2 and inpainting.init == "noised_input"  # chosen on the tuning split
    assert set(hparams["stages"]) == {"base", "refinement"}
    # it loaded the latest complete run of each stage, says which file that was, and records it with its hash
    loaded = json.loads((run_dir / "environment.json").read_text())["loaded"]
    for key, stage in (("base_checkpoint", base), ("refinement_checkpoint", refinement)):
        file = stage / "checkpoints" / "last.ckpt"
        assert loaded[key] == {"path": str(Path("runs") / stage.relative_to(tmp_path / "runs").parent / "latest"
                                            / "checkpoints" / "last.ckpt"),
                               "resolved": str(file), "sha256": content_hash(file)}
        assert f"{key} from {loaded[key]['path']} = {file}" in caplog.text
    if dataset == "embedded":
        # the second base run is the one loaded; the first run's checkpoint is untouched, in its own run
        assert base.name == "version_1"
        first, first_hash = stage_runs[dataset, "first base"]
        assert first.name == "version_0" and content_hash(first / "checkpoints" / "last.ckpt") == first_hash
        # the combined checkpoint tests on its own once the stage files are gone
        stage_files = [stage / "checkpoints" / "last.ckpt" for stage in (base, refinement)]
        for stage in stage_files:
            stage.rename(stage.with_suffix(".moved"))
        try:
            cli(tmp_path, "test", "--config", str(CONFIGS / f"{dataset}.yaml"), *data,
                f"--ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", "--trainer.limit_test_batches=1",
                "--trainer.logger.init_args.name=alone")
        finally:
            for stage in stage_files:
                stage.with_suffix(".moved").rename(stage)
        # ... and predicts a flat folder of mixed categories, conditioning each image on a predicted category
        flat = tmp_path / "flat"
        flat.mkdir()
        for category in ("brick", "coffee", "paper"):
            shutil.copy(tmp_path / "data" / category / "test" / "good" / "000.png", flat / f"{category}.png")
        cli(tmp_path, "predict", "--config", str(CONFIGS / f"{dataset}.yaml"), *data,
            f"--ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", f"--data.init_args.path={flat}",
            "--trainer.logger.init_args.name=flat")
        (alone,) = (tmp_path / "runs" / "alone").iterdir()
        assert len(json.loads((alone / "metrics.json").read_text())["per_category"]) == 1  # one batch of one image
        (flat_run,) = (tmp_path / "runs" / "flat").iterdir()
        rows = list(csv.DictReader((flat_run / "predictions.csv").open()))
        assert len(rows) == 3 and {row["category_source"] for row in rows} == {"predicted"}
        assert {row["category"] for row in rows} <= set(hparams["categories"])


def test_sweep_sweeps_drdc_arguments_on_the_tuning_split_and_its_command_parses(capsys, monkeypatch):
    sweep = yaml.safe_load((REPO / "configs" / "sweeps" / "drdc.yaml").read_text())
    fields = {f"{group}.{field.name}" for group, kind in (("inpainting", InpaintingConfig), ("fusion", FusionConfig))
              for field in dataclasses.fields(kind)}
    names = [key.removeprefix("model.init_args.") for key in sweep["parameters"]]
    paper = {"inpainting.num_timesteps", "inpainting.start_timestep", "inpainting.num_sets", "inpainting.filter_size",
             "fusion.gamma"}
    assert paper <= set(names) <= fields
    command = sweep["command"]
    assert command[:2] == ["${env}", "anomaly-diff"] and command[-1] == "${args}"
    first = [f"--{key}={spec['values'][0]}" for key, spec in sweep["parameters"].items()]
    fixed = command[2:-1]  # paths relative to the repository root, where an agent is started
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as exit_info:
        main([*fixed, *first, "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["init_args"]["inpainting"]["num_timesteps"] == 1
    assert printed["data"]["init_args"]["data_seed"] == 1  # never the test split (data_seed 0)
    assert printed["trainer"]["logger"][-1]["class_path"] == "anomaly_diff.loggers.WandbLogger"
