import os

import pytest

from anomaly_diff.errors import OutputPathError
from anomaly_diff.utils.runs import LATEST, config_changes, point_latest


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
