"""Provenance: which file a run loaded a stage from, as given, as resolved, and by content hash.

A model that loads a stage (an autoencoder folder, a stage checkpoint) keeps one :func:`loaded_file` record per
stage in ``loaded_files``; the run writes them to ``environment.json`` and ``report.md``, so a result names the
exact bytes it came from even when the path was a moving pointer such as ``runs/.../latest``.
"""

import hashlib
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_info

_CHUNK = 1 << 20


def content_hash(path: str | Path) -> str:
    """SHA-256 of a file, or of a folder's files (each one's relative name and content, in name order).

    Args:
        path: An existing file or folder.

    Returns:
        The hex digest.
    """
    path = Path(path)
    files = [path] if path.is_file() else sorted(file for file in path.rglob("*") if file.is_file())
    digest = hashlib.sha256()
    for file in files:
        if file != path:
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with file.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def loaded_file(role: str, source: str | Path, loader: str) -> dict[str, str | None]:
    """Record (and say in one line) that ``loader`` loaded its ``role`` from ``source``.

    Args:
        role: What was loaded, e.g. ``"base_checkpoint"`` or ``"autoencoder"``.
        source: The path as configured (it may pass through ``latest`` links), or a hub id.
        loader: Who loaded it, for the message (the model's class name).

    Returns:
        ``{"path": source, "resolved": real path or None, "sha256": content hash or None}``; the last two are
        ``None`` for a source that is not a local file or folder (a Hugging Face hub id).
    """
    path = Path(source).expanduser()
    if not path.exists():
        rank_zero_info(f"{loader}: {role} from {source} (not a local path: no content hash)")
        return {"path": str(source), "resolved": None, "sha256": None}
    resolved, digest = str(path.resolve()), content_hash(path)
    rank_zero_info(f"{loader}: {role} from {source} = {resolved} (sha256 {digest[:12]})")
    return {"path": str(source), "resolved": resolved, "sha256": digest}
