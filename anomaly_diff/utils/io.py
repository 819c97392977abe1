"""Writing result files and folders so that a killed run never leaves a half-written one; checking output folders."""

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import IO, TextIO

from anomaly_diff.errors import OutputPathError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename.

    Args:
        path: The destination file; its folder is created if missing.
        text: The content, written as UTF-8.

    Returns:
        The destination path.
    """
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes, sync: bool = True) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    Args:
        path: The destination file; its folder is created if missing.
        data: The content.
        sync: Force the content to disk (``fsync``) before the rename, so that the file survives a power loss or
            system crash whole. Without it the rename still guarantees a whole file or none if the process is
            killed; for files that can be made again (pictures) when there are many. Defaults to True.

    Returns:
        The destination path.
    """
    path = Path(path)
    with _replacing(path, "wb", sync=sync) as handle:
        handle.write(data)
    return path


def atomic_write_stream(path: str | Path) -> AbstractContextManager[TextIO]:
    """A UTF-8 text file (``newline=""``, for :mod:`csv`) that takes ``path``'s place when the block ends.

    For content written piece by piece instead of held whole (:func:`atomic_write_text`): it goes to a temporary
    file in the same folder, which is renamed to ``path`` when the block ends, or removed when it raises.

    Args:
        path: The destination file; its folder is created if missing.

    Returns:
        A context manager that yields the open temporary file.
    """
    return _replacing(Path(path), "w", encoding="utf-8", newline="")


@contextmanager
def _replacing(path: Path, mode: str, sync: bool = True, **open_kwargs) -> Iterator[IO]:
    """A temporary file next to ``path``, synced if ``sync``, renamed to ``path`` at the end; removed if it raises."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the permissions open() would
        with os.fdopen(fd, mode, **open_kwargs) as handle:
            yield handle
            handle.flush()
            if sync:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_dir(path: str | Path, write: Callable[[Path], object]) -> Path | None:
    """Fill a folder through a temporary sibling and a rename, so a killed write never leaves a half-written one.

    ``write(folder)`` fills a fresh temporary folder next to ``path``, which then takes ``path``'s place. An
    existing ``path`` is not deleted: it is first renamed to ``<path>.replaced-<time>``, which is returned so the
    caller can say where the old one stays.

    Args:
        path: The destination folder; its parent is created if missing.
        write: Writes the folder's content into the folder it is given, e.g. a model's ``save_pretrained``.

    Returns:
        Where the folder that was replaced now lies, or ``None`` if there was none.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        os.chmod(temporary, 0o777 & ~_umask())  # mkdtemp makes 0700; give the folder the permissions mkdir would
        write(temporary)
        kept = None
        if path.exists():
            kept = path.with_name(f"{path.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
            os.replace(path, kept)
        os.replace(temporary, path)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return kept


def check_output_dir(path: str | Path, name: str) -> None:
    """Raise :class:`OutputPathError` unless directory ``path`` exists or can be created, and is writable.

    A remote path (``s3://...``) is left to its file system.

    Args:
        path: The directory a run writes into.
        name: The option that names it, for the message (e.g. ``"trainer.logger.init_args.save_dir"``).
    """
    if "://" in str(path):
        return
    path = Path(path).expanduser().absolute()
    existing = next(parent for parent in (path, *path.parents) if parent.exists())
    if not existing.is_dir():
        raise OutputPathError(f"{name}={path}: {existing} is a file, not a directory; give a writable directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputPathError(
            f"{name}={path}: this user may not write in {existing}; fix its permissions or give another directory"
        )
