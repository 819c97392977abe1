"""``make sweep``: W&B is checked before anything is created, and each failure is one line with exit code 1."""

import subprocess
import sys
from pathlib import Path

import pytest

from anomaly_diff.sweep import main

REPO = Path(__file__).resolve().parents[2]
SWEEP = str(REPO / "configs" / "sweeps" / "deco_diff.yaml")


@pytest.fixture
def no_wandb(monkeypatch, tmp_path):
    for key in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_ENTITY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))


def error_of(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("make sweep: error: ")
    return line


def test_not_logged_in(no_wandb, capsys):
    assert "not logged in to W&B" in error_of(capsys, [SWEEP]) and "wandb login" in error_of(capsys, [SWEEP])


def test_without_the_wandb_extra(no_wandb, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if wandb were not installed
    assert error_of(capsys, [SWEEP]).endswith("needs the wandb extra: pip install 'anomaly-diff[wandb]'")


def test_offline_mode(no_wandb, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert "WANDB_MODE=offline" in error_of(capsys, [SWEEP])


def test_unreachable_server(no_wandb, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    assert "W&B at http://127.0.0.1:9 is unreachable" in error_of(capsys, [SWEEP])


def test_missing_or_wrong_sweep_file(no_wandb, capsys, tmp_path):
    assert "no sweep file" in error_of(capsys, [str(tmp_path / "nope.yaml")])
    (tmp_path / "bad.yaml").write_text("method: random\n")
    assert "is no sweep file" in error_of(capsys, [str(tmp_path / "bad.yaml")])


def test_make_target_requires_a_file():
    result = subprocess.run(["make", "-s", "-o", ".venv/.installed", "sweep"], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and "make sweep SWEEP=configs/sweeps/" in result.stderr
