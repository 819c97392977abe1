import pytest
import yaml

from anomaly_diff.commands import main
from anomaly_diff.errors import UnknownConfigError
from anomaly_diff.utils.builtin_configs import (
    CONFIG_DIR,
    builtin_config,
    builtin_configs,
    resolve_config_args,
)

EMBEDDED = str(CONFIG_DIR / "deco_diff" / "embedded.yaml")
WANDB = str(CONFIG_DIR / "loggers" / "wandb.yaml")


@pytest.fixture
def outside_a_clone(tmp_path, monkeypatch):
    """An empty working directory: no configs/ beside it."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_every_packaged_config_is_listed_with_its_leading_comment():
    configs = builtin_configs()
    assert len(configs) == len(list(CONFIG_DIR.rglob("*.yaml")))
    assert configs["deco_diff/embedded"] == "DeCo-Diff on the embedded data (9 categories, 128 px)"
    assert {"autoencoder/embedded", "drdc/base/embedded", "drdc/refinement/embedded", "loggers/wandb"} <= set(configs)


@pytest.mark.parametrize("name", ["deco_diff/embedded", "deco_diff/embedded.yaml", "configs/deco_diff/embedded.yaml"])
def test_a_config_is_found_by_name(name):
    assert builtin_config(name) == CONFIG_DIR / "deco_diff" / "embedded.yaml"


@pytest.mark.parametrize("name", ["deco_diff/nothing", "../cli.py", "/etc/passwd", "deco_diff"])
def test_names_outside_the_packaged_configs_find_nothing(name):
    assert builtin_config(name) is None


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["fit", "--config", "deco_diff/embedded"], ["fit", "--config", EMBEDDED]),
        (["fit", "--config=deco_diff/embedded.yaml"], ["fit", f"--config={EMBEDDED}"]),
        (["fit", "--config", "configs/deco_diff/embedded.yaml"], ["fit", "--config", EMBEDDED]),
        (["fit", "--trainer.logger+=loggers/wandb.yaml"], ["fit", f"--trainer.logger+={WANDB}"]),
        (["fit", "--trainer.logger", "loggers/wandb.yaml"], ["fit", "--trainer.logger", WANDB]),
        # not config files: left to LightningCLI
        (["fit", "--trainer.max_epochs", "2", "--model", "loggers/wandb"], None),
        (["fit", "--config", "{trainer: {max_epochs: 1}}"], None),
        (["fit", "--data.init_args.root=data/none.yaml"], None),
    ],
)
def test_config_values_that_name_packaged_configs_become_their_paths(outside_a_clone, args, expected):
    assert resolve_config_args(args) == (args if expected is None else expected)


def test_an_existing_file_wins_over_a_packaged_config_of_the_same_name(outside_a_clone):
    (outside_a_clone / "deco_diff").mkdir()
    (outside_a_clone / "deco_diff" / "embedded.yaml").write_text("seed_everything: 1\n")
    args = ["fit", "--config", "deco_diff/embedded.yaml"]
    assert resolve_config_args(args) == args


def test_an_unknown_config_is_refused_with_the_names(outside_a_clone):
    with pytest.raises(UnknownConfigError, match=r"--config deco_diff/embeded: no such file and no built-in config"
                                                 r" of that name; give a config file or one of: .*deco_diff/embedded"):
        resolve_config_args(["fit", "--config", "deco_diff/embeded"])


def test_the_cli_refuses_an_unknown_config_in_one_line_with_exit_code_2(outside_a_clone, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "nothing/here"])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("anomaly-diff: error: --config nothing/here: no such file") and "deco_diff/embedded" in line


def test_a_packaged_config_parses_by_name_with_its_relative_includes(outside_a_clone, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "deco_diff/embedded", "--print_config"])
    assert exit_info.value.code == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["data"]["class_path"] == "anomaly_diff.data.Embedded"  # data: ../data/embedded.yaml
    assert config["data"]["init_args"]["root"] == ".cache/embedded"  # run paths stay relative to the working dir
    assert config["model"]["init_args"]["autoencoder"] == "runs/autoencoder/embedded/latest/autoencoder"
