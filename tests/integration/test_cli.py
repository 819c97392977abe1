"""The command line end to end: fit + test on a tiny MVTec AD layout, configs, overrides and errors."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from sklearn.metrics import roc_auc_score

from anomaly_diff import cli
from anomaly_diff.cli import main
from anomaly_diff.data import MVTecAD
from anomaly_diff.errors import ConfigError
from anomaly_diff.models import base as models_base
from anomaly_diff.models.autoencoder import Autoencoder
from tests.helpers.runs import run_dirs

REPO = Path(__file__).resolve().parents[2]


def run_dir(tmp_path: Path) -> Path:
    (version,) = run_dirs(tmp_path / "runs" / "tiny")
    return version


def test_fit_then_test_writes_checkpoints_metrics_and_heatmaps(tmp_path, tiny_config, mvtec_root):
    main(["fit", "--config", str(tiny_config)])
    out = run_dir(tmp_path)
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert (out / "config.yaml").is_file()
    results = json.loads((out / "metrics.json").read_text())
    assert sorted(results["per_category"]) == ["a", "b"]
    assert {p.parent.name for p in (out / "heatmaps").rglob("*.png")} == {"a", "b"}

    # The reported image AUROC of each category equals sklearn's on the checkpoint's own predictions.
    model = Autoencoder.load_from_checkpoint(next((out / "checkpoints").glob("epoch*.ckpt"))).eval()
    data = MVTecAD(str(mvtec_root), image_size=36, crop_size=32, batch_size=4)
    data.setup("test")
    scores, labels, categories = [], [], []
    with torch.no_grad():
        for batch in data.test_dataloader():
            scores += model.predict_anomaly(batch)["pred_score"].tolist()
            labels += batch["label"].tolist()
            categories += batch["category"]
    for category in ("a", "b"):
        pick = np.array(categories) == category
        expected = roc_auc_score(np.array(labels)[pick], np.array(scores)[pick])
        assert results["per_category"][category]["image_AUROC"] == pytest.approx(expected, abs=1e-6)


def test_a_fit_that_trains_nothing_keeps_the_model_it_tests(tmp_path, tiny_config):
    # max_epochs 0 (DRDC's combined model): ModelCheckpoint writes nothing, the CLI writes last.ckpt and tests it.
    main(["fit", "--config", str(tiny_config), "--trainer.max_epochs=0"])
    out = run_dir(tmp_path)
    assert [path.name for path in (out / "checkpoints").iterdir()] == ["last.ckpt"]
    saved = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    model = Autoencoder.load_from_checkpoint(out / "checkpoints" / "last.ckpt")
    assert saved["global_step"] == 0 and model.categories == ["a", "b"]
    assert sorted(json.loads((out / "metrics.json").read_text())["per_category"]) == ["a", "b"]


def test_test_on_a_subset_keeps_the_checkpoint_categories(tmp_path, tiny_config):
    main(["fit", "--config", str(tiny_config), "--test_after_fit=false"])
    ckpt = run_dir(tmp_path) / "checkpoints" / "last.ckpt"
    main(["test", "--config", str(tiny_config), "--ckpt_path", str(ckpt), "--data.init_args.categories=[b]"])
    newest = max(run_dirs(tmp_path / "runs" / "tiny"), key=lambda p: p.stat().st_mtime)
    results = json.loads((newest / "metrics.json").read_text())
    assert list(results["per_category"]) == ["b"]
    saved = yaml.safe_load((newest / "config.yaml").read_text())
    assert saved["model"]["init_args"]["categories"] == ["a", "b"]


def test_dotted_overrides_and_print_config(tiny_config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(tiny_config), "--trainer.max_epochs=3", "--model.init_args.kl_weight=0.5",
              "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["max_epochs"] == 3
    assert printed["model"]["init_args"]["kl_weight"] == 0.5


def test_later_config_files_win(tmp_path, tiny_config, capsys):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("trainer:\n  max_epochs: 7\n")
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(tiny_config), "--config", str(overlay), "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["max_epochs"] == 7
    assert printed["trainer"]["accelerator"] == "cpu"


def test_unknown_config_key_is_named(tmp_path, tiny_config, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(tiny_config.read_text().replace("max_epochs: 1", "max_epoch: 1"))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(bad)])
    assert exit_info.value.code != 0
    assert "max_epoch" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["lightning", "fit", "--help"], ["anomaly-diff", "test", "--help"]])
def test_console_scripts_are_installed(command):
    script = Path(sys.executable).parent / command[0]
    result = subprocess.run([str(script), *command[1:]], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--config" in result.stdout and "--ckpt_path" in result.stdout


def test_shipped_config_prints_resolved(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(REPO / "configs/autoencoder/embedded.yaml"), "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["class_path"] == "anomaly_diff.data.Embedded"
    assert printed["model"]["class_path"] == "anomaly_diff.models.autoencoder.Autoencoder"


def test_python_dash_m_runs_the_cli():
    result = subprocess.run([sys.executable, "-m", "anomaly_diff", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and "fit" in result.stdout and "predict" in result.stdout


@pytest.mark.parametrize(
    ("override", "culprit"),
    [
        ("--data.init_args.root=/nonexistent/mvtec", "/nonexistent/mvtec"),
        ("--data.init_args.categories=[a,zebra]", "zebra"),
    ],
)
def test_bad_input_ends_with_one_line_naming_the_culprit(tiny_config, capsys, override, culprit):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(tiny_config), override])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("anomaly-diff: error: ") and culprit in last
    assert "Traceback" not in err


def test_traceback_on_request(tiny_config, monkeypatch):
    monkeypatch.setenv("ANOMALY_DIFF_TRACEBACK", "1")
    with pytest.raises(Exception, match="/nonexistent/mvtec"):
        main(["fit", "--config", str(tiny_config), "--data.init_args.root=/nonexistent/mvtec"])


def test_only_user_errors_end_with_one_line(tiny_config, monkeypatch, capsys):
    # a bug's KeyError (here from a check that runs on every command) keeps its traceback; a UserError is one line
    monkeypatch.delenv("ANOMALY_DIFF_TRACEBACK", raising=False)

    def lookup_bug(config):
        return {}["ckpt_path"]

    monkeypatch.setattr(cli, "_check_checkpoint", lookup_bug)
    with pytest.raises(KeyError, match="ckpt_path"):
        main(["fit", "--config", str(tiny_config)])

    def refuse(config):
        raise ConfigError("--ckpt_path x is refused; give another")

    monkeypatch.setattr(cli, "_check_checkpoint", refuse)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(tiny_config)])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "anomaly-diff: error: ConfigError: --ckpt_path x is refused; give another"
    )


def test_a_constructors_internal_value_error_keeps_its_traceback(tiny_config, monkeypatch, capsys):
    # only a UserError is shown as one line: a bug's ValueError inside a constructor (here the model's) is not
    # turned into a ConfigError, so its traceback leads to the bug
    monkeypatch.delenv("ANOMALY_DIFF_TRACEBACK", raising=False)

    def broken(num_classes):
        raise ValueError("an internal invariant failed")

    monkeypatch.setattr(models_base, "CategoryClassifier", broken)
    with pytest.raises(ValueError) as error_info:
        main(["fit", "--config", str(tiny_config)])
    chain = [error_info.value]
    while chain[-1].__cause__ is not None:
        chain.append(chain[-1].__cause__)
    assert not any(isinstance(error, ConfigError) for error in chain)
    assert str(chain[-1]) == "an internal invariant failed"
    assert "anomaly-diff: error:" not in capsys.readouterr().err


def test_reuse_latest_without_a_run_folder_logger_is_refused_with_one_line(tmp_path, tiny_config, capsys):
    # --reuse_latest looks for <save_dir>/<name>/latest, which only a CSV or TensorBoard logger defines
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(tiny_config), "--reuse_latest=true", "--trainer.logger=false"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "--reuse_latest=true needs a CSV or TensorBoard logger as the first logger" in err
    assert "got NoneType" in err and not (tmp_path / "runs").exists()
