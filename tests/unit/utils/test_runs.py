import os
from pathlib import Path

import pytest
from lightning.pytorch.loggers import CSVLogger, Logger

from anomaly_diff.errors import OutputPathError
from anomaly_diff.utils.runs import LATEST, config_changes, point_latest, run_directory
from tests.helpers.trainers import bare_trainer


class SaveDirLogger(Logger):
    """A logger that is neither CSV nor TensorBoard: Lightning takes its ``save_dir`` as the run directory."""

    def __init__(self, save_dir):
        super().__init__()
        self._save_dir = save_dir

    name, version = "run", 0

    @property
    def save_dir(self):
        return self._save_dir

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        pass


def test_run_directory_is_the_first_loggers_as_trainer_log_dir_names_it(tmp_path):
    csv_logger = CSVLogger(tmp_path / "runs", name="drdc")
    for trainer in (bare_trainer(tmp_path), bare_trainer(tmp_path, logger=csv_logger),
                    bare_trainer(tmp_path, logger=[SaveDirLogger(str(tmp_path / "own")), csv_logger])):
        assert run_directory(trainer) == Path(trainer.log_dir)
    assert run_directory(bare_trainer(tmp_path, logger=csv_logger)) == tmp_path / "runs" / "drdc" / "version_0"
    assert run_directory(bare_trainer(tmp_path, logger=SaveDirLogger(None))) == tmp_path  # log_dir would be None


def test_latest_moves_to_each_complete_run_and_says_what_it_named_before(tmp_path):
    first, second = tmp_path / "version_0", tmp_path / "version_1"
    for run in (first, second):
        run.mkdir()
        (run / "config.yaml").write_text(run.name)
    assert point_latest(first) == f"{tmp_path / LATEST} -> version_0"
    assert (tmp_path / LATEST / "config.yaml").read_text() == "version_0"
    assert point_latest(second) == f"{tmp_path / LATEST} -> version_1 (was version_0, which stays)"
    assert (tmp_path / LATEST / "config.yaml").read_text() == "version_1"
    assert os.readlink(tmp_path / LATEST) == "version_1"  # relative: the runs folder can move
    assert (first / "config.yaml").read_text() == "version_0"
    assert sorted(p.name for p in tmp_path.iterdir()) == [LATEST, "version_0", "version_1"]  # no temporary left


def test_latest_refuses_to_replace_a_folder(tmp_path):
    (tmp_path / LATEST).mkdir()
    (tmp_path / "version_0").mkdir()
    with pytest.raises(OutputPathError, match="is not a link made by a run"):
        point_latest(tmp_path / "version_0")


def test_config_changes_list_what_differs_but_not_where_runs_are_written():
    old = {
        "trainer": {"max_epochs": 20, "logger": {"init_args": {"save_dir": "runs"}}, "enable_progress_bar": True},
        "data": {"init_args": {"categories": ["brick", "grass"], "root": ".cache/embedded"}},
        "checkpoint": {"dirpath": None},
        "test_after_fit": True,
    }
    new = {
        "trainer": {"max_epochs": 2, "logger": {"init_args": {"save_dir": "/tmp/elsewhere"}}},
        "data": {"init_args": {"categories": ["brick"], "root": ".cache/embedded", "seed": 1}},
        "checkpoint": {"dirpath": "somewhere"},
        "test_after_fit": False,
        "reuse_latest": True,
    }
    assert config_changes(old, new) == [
        "data.init_args.categories: ['brick', 'grass'] -> ['brick']",
        "data.init_args.seed: <absent> -> 1",
        "trainer.max_epochs: 20 -> 2",
    ]
    assert config_changes(old, old) == []
