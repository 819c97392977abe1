import os
import stat

import pytest

from anomaly_diff.utils.io import atomic_write_bytes, atomic_write_text


def test_writes_the_text_with_ordinary_permissions(tmp_path):
    target = atomic_write_text(tmp_path / "sub" / "metrics.json", "{}\n")
    assert target.read_text() == "{}\n"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in target.parent.iterdir()] == ["metrics.json"]


def test_failure_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = atomic_write_text(tmp_path / "metrics.json", "old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_writes_bytes_atomically(tmp_path):
    target = atomic_write_bytes(tmp_path / "panel.png", b"\x89PNG\r\n")
    assert target.read_bytes() == b"\x89PNG\r\n"
    assert [p.name for p in tmp_path.iterdir()] == ["panel.png"]
