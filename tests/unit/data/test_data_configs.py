"""Every shipped data config names a datamodule and gives exactly, and with valid types, its constructor's arguments."""

import importlib
import inspect
from pathlib import Path

import pytest
import yaml
from jsonargparse import ArgumentParser

from anomaly_diff.data import AnomalyDataModule

CONFIGS = sorted((Path(__file__).parents[3] / "configs" / "data").glob("*.yaml"))


def test_every_datamodule_has_a_config():
    assert {path.stem for path in CONFIGS} == {"mvtec", "visa", "btad", "folder", "embedded"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.stem)
def test_config_keys_are_exactly_the_constructor_arguments(path):
    config = yaml.safe_load(path.read_text())
    module, _, name = config["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    assert set(config["init_args"]) == set(inspect.signature(cls.__init__).parameters) - {"self"}
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(AnomalyDataModule, "data")
    parsed = parser.parse_object({"data": config})  # type-checks every value the way LightningCLI does
    assert parsed.data.class_path == config["class_path"]
    assert dict(vars(parsed.data.init_args)) == config["init_args"]
