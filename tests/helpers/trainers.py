"""A real Lightning trainer for unit tests that call a callback's or a model's hooks themselves."""

from pathlib import Path

from lightning.pytorch import Trainer


def bare_trainer(root: Path | None = None, **kwargs) -> Trainer:
    """A one-process CPU trainer without logger, checkpoints, progress bar or summary; its run directory is ``root``.

    Args:
        root: ``default_root_dir``, where the callbacks write (no logger names another run directory).
        **kwargs: Further ``Trainer`` arguments (e.g. ``logger`` for a logger's run directory).

    Returns:
        The trainer; set attributes such as ``datamodule`` or ``ckpt_path`` on it as a run would.
    """
    settings = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_checkpointing": False,
                "enable_progress_bar": False, "enable_model_summary": False}
    return Trainer(default_root_dir=root, **{**settings, **kwargs})
