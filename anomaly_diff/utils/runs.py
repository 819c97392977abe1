"""A run directory: where a running trainer writes it, the ``latest`` pointer, and whether a run can be reused.

Every artifact of a run (checkpoints, an exported autoencoder) lives in its own run directory,
``<save_dir>/<name>/version_N`` (:func:`run_directory`). Later stages load either an explicit path into one, or
``<save_dir>/<name>/latest/...``: ``latest`` is a symbolic link that only a complete, successful ``fit`` moves
(:func:`point_latest`, an atomic swap), so an interrupted or failed run never changes what later stages load, and
no run ever overwrites another's files.
"""

import os
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from anomaly_diff.errors import OutputPathError

LATEST = "latest"

# Config keys that say where a run writes and how it shows progress, not what it trains: two runs that differ only
# here made the same artifact (prefixes of dotted keys).
PLACEMENT_KEYS = (
    "trainer.logger",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.default_root_dir",
    "checkpoint.dirpath",
    "test_after_fit",
    "reuse_latest",
    "heatmaps",
    "report",
    "predictions",
)


def run_directory(trainer: Trainer) -> Path:
    """The run directory ``trainer.log_dir`` names, without its broadcast: safe in code that runs on one rank.

    ``Trainer.log_dir`` broadcasts from rank zero, a collective call that every process must make; called only on
    global rank zero under DDP (in ``SaveConfigCallback.save_config``, after ``if trainer.is_global_zero``) it
    waits forever for the other ranks. This reads the same directory on the calling process: the first logger's
    ``log_dir`` (CSV, TensorBoard) or ``save_dir`` (others), else ``trainer.default_root_dir``.

    Args:
        trainer: The running trainer.

    Returns:
        The run directory (not created here).
    """
    if not trainer.loggers:
        return Path(trainer.default_root_dir)
    logger = trainer.loggers[0]
    directory = logger.log_dir if isinstance(logger, (CSVLogger, TensorBoardLogger)) else logger.save_dir
    return Path(directory if directory is not None else trainer.default_root_dir)


def point_latest(run_dir: str | Path) -> str:
    """Make ``<parent of run_dir>/latest`` a link to ``run_dir``, replacing the old link atomically.

    Args:
        run_dir: A complete run's directory, e.g. ``runs/drdc/base/embedded/version_3``.

    Returns:
        One line saying what the pointer now names and what it named before (that run stays where it is).

    Raises:
        OutputPathError: ``latest`` exists and is not a link (a folder of that name would be replaced).
    """
    run_dir = Path(run_dir)
    link = run_dir.parent / LATEST
    if link.exists() and not link.is_symlink():
        raise OutputPathError(f"{link} is not a link made by a run; move it away, it names the newest complete run")
    previous = os.readlink(link) if link.is_symlink() else None
    temporary = link.with_name(f".{LATEST}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)
    os.symlink(run_dir.name, temporary, target_is_directory=True)  # relative: the runs folder can move
    os.replace(temporary, link)
    if previous is None or previous == run_dir.name:
        return f"{link} -> {run_dir.name}"
    return f"{link} -> {run_dir.name} (was {previous}, which stays)"


def _flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(config, dict):
        flat = {}
        for key, value in config.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: config}


def config_changes(old: dict, new: dict, ignore: tuple[str, ...] = PLACEMENT_KEYS) -> list[str]:
    """The settings that differ between two resolved configs (``config.yaml`` contents), as ``key: old -> new``.

    Args:
        old: The earlier run's resolved config.
        new: This run's resolved config.
        ignore: Prefixes of dotted keys left out of the comparison (:data:`PLACEMENT_KEYS`).

    Returns:
        One entry per differing dotted key, in key order; empty when the runs made the same artifact.
    """
    old_flat, new_flat = _flatten(old), _flatten(new)
    changes = []
    for key in sorted(old_flat.keys() | new_flat.keys()):
        if any(key == prefix or key.startswith(f"{prefix}.") for prefix in ignore):
            continue
        before, after = old_flat.get(key, "<absent>"), new_flat.get(key, "<absent>")
        if before != after:
            changes.append(f"{key}: {before} -> {after}")
    return changes
