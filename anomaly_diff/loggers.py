"""Weights & Biases: a ``WandbLogger`` that is offline unless W&B is set up, and the helpers the callbacks use.

``configs/loggers/wandb.yaml`` configures :class:`WandbLogger`; add it to a run with
``--trainer.logger+=configs/loggers/wandb.yaml`` (after the config's CSV logger, which keeps the run directory) or
use it alone with ``--trainer.logger=configs/loggers/wandb.yaml``. The callbacks log to every W&B logger of the
trainer (Lightning's own ``WandbLogger`` included): the resolved config (:func:`log_resolved_config`), the metric
table as a ``wandb.Table`` (``Evaluator``) and the heatmap panels as ``wandb.Image`` (``HeatmapWriter``).
W&B is the ``wandb`` extra (``pip install 'anomaly-diff[wandb]'``); without it :class:`WandbLogger` refuses to start
with one line saying so.
"""

import netrc
import os
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch import Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.utilities import rank_zero_only

from anomaly_diff.utils.imports import require_extra

WANDB_HOST = "api.wandb.ai"


def wandb_is_set_up() -> bool:
    """Whether the user chose a W&B mode (``WANDB_MODE``) or has credentials (:func:`has_wandb_login`).

    Reads the environment and ``~/.netrc`` only; never contacts W&B.
    """
    return bool(os.environ.get("WANDB_MODE")) or has_wandb_login()


def has_wandb_login() -> bool:
    """Whether W&B credentials are present (never contacts W&B).

    That is ``WANDB_API_KEY``, or a netrc entry (``NETRC``, else ``~/.netrc``) for the W&B host (``WANDB_BASE_URL``,
    else ``api.wandb.ai``) as ``wandb login`` writes it.
    """
    if os.environ.get("WANDB_API_KEY"):
        return True
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    host = os.environ.get("WANDB_BASE_URL", f"https://{WANDB_HOST}").split("://")[-1].rstrip("/")
    try:
        return path.is_file() and netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbLogger(LightningWandbLogger):
    """Lightning's ``WandbLogger`` with ``offline`` decided from the environment and a run directory of its own.

    Lightning's own would give every run the shared ``save_dir``, so runs would overwrite each other's files; here
    the run directory is ``<save_dir>/<project>/<run id>`` (created on global rank zero), checkpoints in
    ``<run dir>/checkpoints``; W&B itself still writes to ``<save_dir>/wandb/``.

    Args:
        offline: ``True`` or ``False`` as in Lightning's logger; ``None`` (the default) means offline unless the
            user set ``WANDB_MODE`` (then W&B follows it: ``online``, ``offline``, ``disabled``) or is logged in
            (``WANDB_API_KEY`` or ``wandb login``). Offline runs are written under ``<save_dir>/wandb/`` and can be
            uploaded later with ``wandb sync``.
        save_dir: Where W&B writes its run folder (``<save_dir>/wandb/<run>``); ``None`` takes ``WANDB_DIR``, else
            ``runs``.
        **kwargs: Everything else of Lightning's ``WandbLogger`` (``project``, ``name``, ``entity``, ``tags``,
            ``log_model``, ...), and ``wandb.init`` arguments.
    """

    def __init__(self, offline: bool | None = None, save_dir: str | None = None, **kwargs: Any) -> None:
        require_extra("wandb", "wandb", "W&B logging")
        if offline is None:
            offline = not wandb_is_set_up()
        if save_dir is None:
            save_dir = os.environ.get("WANDB_DIR") or "runs"
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        super().__init__(offline=offline, save_dir=save_dir, **kwargs)

    @property
    def save_dir(self) -> str | None:
        """The run directory ``<save_dir>/<project>/<run id>`` (the shared ``save_dir`` on other ranks)."""
        if rank_zero_only.rank != 0:
            return self._save_dir  # Lightning broadcasts rank zero's directory
        return os.path.join(self._save_dir, self._project or "wandb", self.experiment.id)

    @property
    def name(self) -> str:
        """Empty: the run directory (:attr:`save_dir`) already names the project and run."""
        return ""

    @property
    def version(self) -> str:
        """Empty: the run directory (:attr:`save_dir`) already names the run."""
        return ""


def wandb_loggers(trainer: Trainer) -> list[LightningWandbLogger]:
    """The trainer's W&B loggers (any ``lightning.pytorch.loggers.WandbLogger``), in order; none without loggers."""
    return [logger for logger in trainer.loggers if isinstance(logger, LightningWandbLogger)]


def log_resolved_config(trainer: Trainer) -> None:
    """Log the CLI's resolved config (as written to ``config.yaml``) to every W&B logger, under ``config``.

    The config is taken from LightningCLI's config-saving callback among ``trainer.callbacks``; without one (the
    trainer was built outside the CLI) nothing is logged. Only global rank zero logs (the loggers' own rule).
    """
    loggers = wandb_loggers(trainer)
    saver = next((c for c in trainer.callbacks if isinstance(c, SaveConfigCallback)), None)
    if not loggers or saver is None:
        return
    config = yaml.safe_load(saver.parser.dump(saver.config, skip_none=False, skip_check=True))
    for logger in loggers:
        logger.log_hyperparams({"config": config})
