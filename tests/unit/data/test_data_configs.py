"""Every shipped data config names a datamodule and gives exactly, and with valid types, its constructor's arguments.

A datamodule passes the base's arguments on through ``**kwargs``; the CLI (jsonargparse) follows them there, so its
``--print_config`` and help list every one of them.
"""

import importlib
import inspect
from pathlib import Path

import pytest
import yaml
from jsonargparse import ArgumentParser

from anomaly_diff.cli import main
from anomaly_diff.data import BTAD, AnomalyDataModule, Embedded, Folder, MVTecAD, VisA

DATAMODULES = (MVTecAD, BTAD, VisA, Folder, Embedded)
BASE_ARGUMENTS = set(inspect.signature(AnomalyDataModule.__init__).parameters) - {"self"}
CONFIGS = sorted((Path(__file__).parents[3] / "configs" / "data").glob("*.yaml"))


def test_every_datamodule_has_a_config():
    assert {path.stem for path in CONFIGS} == {"mvtec", "visa", "btad", "folder", "embedded"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.stem)
def test_config_keys_are_exactly_the_constructor_arguments(path):
    config = yaml.safe_load(path.read_text())
    module, _, name = config["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    assert set(config["init_args"]) == _cli_arguments(cls)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(AnomalyDataModule, "data")
    parsed = parser.parse_object({"data": config})  # type-checks every value the way LightningCLI does
    assert parsed.data.class_path == config["class_path"]
    assert dict(vars(parsed.data.init_args)) == config["init_args"]


def _cli_arguments(cls: type) -> set[str]:
    """The arguments the CLI offers for ``cls``: its own and those it passes on to the base through ``**kwargs``."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, "data")
    return set(vars(parser.get_defaults().data))


@pytest.mark.parametrize("cls", DATAMODULES, ids=lambda cls: cls.__name__)
def test_cli_offers_every_base_argument(cls):
    own = set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}
    assert _cli_arguments(cls) == BASE_ARGUMENTS | own


@pytest.mark.parametrize("cls", DATAMODULES, ids=lambda cls: cls.__name__)
def test_print_config_and_help_list_every_base_argument(cls, capsys):
    args = ["fit", "--model", "anomaly_diff.models.autoencoder.Autoencoder", "--data", cls.__name__]
    with pytest.raises(SystemExit):
        main([*args, "--print_config"])
    init_args = yaml.safe_load(capsys.readouterr().out)["data"]["init_args"]
    assert BASE_ARGUMENTS <= set(init_args)
    with pytest.raises(SystemExit):
        main(["fit", "--data.help", cls.__name__])
    shown = capsys.readouterr().out
    assert all(f"--data.{name} " in shown for name in BASE_ARGUMENTS)
    assert "Side of the central crop taken after resizing" in shown  # the base's own description
