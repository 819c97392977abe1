import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from anomaly_diff.utils.io import atomic_write_bytes, atomic_write_dir, atomic_write_stream, atomic_write_text

REPO = Path(__file__).resolve().parents[3]


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


def test_files_are_synced_before_the_rename_unless_told_not_to(tmp_path, monkeypatch):
    # Metrics, configs and CSVs must survive a crash whole; pictures that can be drawn again skip the fsync.
    synced = []
    monkeypatch.setattr(os, "fsync", synced.append)
    atomic_write_text(tmp_path / "metrics.json", "{}")
    atomic_write_bytes(tmp_path / "panel.png", b"\x89PNG\r\n")
    with atomic_write_stream(tmp_path / "predictions.csv") as handle:
        handle.write("a\n")
    assert len(synced) == 3
    atomic_write_bytes(tmp_path / "overlay.png", b"\x89PNG\r\n", sync=False)
    assert len(synced) == 3 and (tmp_path / "overlay.png").read_bytes() == b"\x89PNG\r\n"


def _write_model(folder, weights=b"new weights"):
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(weights)


def test_a_streamed_write_appears_whole_or_not_at_all(tmp_path):
    target = atomic_write_text(tmp_path / "predictions.csv", "old\n")
    with atomic_write_stream(target) as handle:
        handle.write("a,b\n")
        assert target.read_text() == "old\n"  # not yet replaced
        handle.write("c,\"d\ne\"\r\n")
    assert target.read_bytes() == b'a,b\nc,"d\ne"\r\n'  # UTF-8, newlines untranslated (csv)
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
    with pytest.raises(RuntimeError, match="killed"), atomic_write_stream(target) as handle:
        handle.write("half")
        raise RuntimeError("killed")
    assert target.read_bytes() == b'a,b\nc,"d\ne"\r\n'
    assert [p.name for p in tmp_path.iterdir()] == ["predictions.csv"]


def test_folder_write_keeps_the_replaced_folder_and_says_where(tmp_path):
    target = tmp_path / "autoencoder"
    assert atomic_write_dir(target, lambda folder: _write_model(folder, b"old")) is None
    kept = atomic_write_dir(target, _write_model)
    assert (target / "model.safetensors").read_bytes() == b"new weights"
    assert kept.parent == tmp_path and kept.name.startswith("autoencoder.replaced-")
    assert (kept / "model.safetensors").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["autoencoder", kept.name])
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~mask


def test_failing_folder_write_leaves_the_old_folder_and_no_temporary(tmp_path):
    target = tmp_path / "autoencoder"
    atomic_write_dir(target, lambda folder: _write_model(folder, b"old"))

    def half_write(folder):
        (folder / "config.json").write_text("{}")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_dir(target, half_write)
    assert (target / "model.safetensors").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["autoencoder"]


def test_killed_folder_write_leaves_the_old_folder(tmp_path):
    """A process killed (SIGKILL: no cleanup runs) in the middle of an export leaves the previous export whole."""
    target = tmp_path / "autoencoder"
    atomic_write_dir(target, lambda folder: _write_model(folder, b"old"))
    script = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from anomaly_diff.utils.io import atomic_write_dir\n"
        "def half_write(folder):\n"
        "    (folder / 'config.json').write_text('{\"half\": true}')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "atomic_write_dir(Path(sys.argv[1]), half_write)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(target)], cwd=REPO)
    assert result.returncode == -signal.SIGKILL
    assert (target / "config.json").read_text() == "{}" and (target / "model.safetensors").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == ["autoencoder"]
