"""Reading a logger's folder of runs in tests."""

from pathlib import Path


def run_dirs(folder: Path) -> list[Path]:
    """The run directories in ``folder`` (``<save_dir>/<name>``), oldest version first, without the ``latest`` link."""
    return sorted((path for path in folder.iterdir() if not path.is_symlink()), key=lambda p: (len(p.name), p.name))
