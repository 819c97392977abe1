"""The ``anomaly-diff`` command line (also installed as ``lightning``): LightningCLI with this project's wiring.

What it adds to a plain LightningCLI (categories from the data, test after fit, the ``latest`` link, the always-on
callbacks, predict's outputs, resuming) is described in the README, section "Using it".
"""

import os
import pickle
import sys
from pathlib import Path

import torch
import yaml
from jsonargparse import Namespace
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar, RichProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from anomaly_diff.callbacks.calibration import NormalCalibration
from anomaly_diff.callbacks.evaluation import Evaluator
from anomaly_diff.callbacks.heatmaps import HeatmapWriter
from anomaly_diff.callbacks.predictions import PredictionWriter
from anomaly_diff.callbacks.report import RunReport
from anomaly_diff.callbacks.reproducibility import RandomStateCheckpoint, RunRecord
from anomaly_diff.errors import ConfigError, MissingFileError, UnknownConfigError, UserError
from anomaly_diff.utils.builtin_configs import resolve_config_args
from anomaly_diff.utils.imports import import_class
from anomaly_diff.utils.io import check_output_dir
from anomaly_diff.utils.runs import LATEST, config_changes, point_latest, run_directory

# ckpt_path values that Lightning resolves itself instead of reading a file.
_SPECIAL_CKPT_PATHS = ("last", "best", "hpc")


class AnomalyCLI(LightningCLI):
    """LightningCLI that links the data's categories to the model and tests after fitting."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Add the always-on callbacks as config groups and the ``test_after_fit`` switch."""
        parser.add_lightning_class_args(Evaluator, "evaluator")
        parser.add_lightning_class_args(HeatmapWriter, "heatmaps")
        parser.add_lightning_class_args(RunReport, "report")
        parser.add_lightning_class_args(NormalCalibration, "calibration")
        parser.add_lightning_class_args(PredictionWriter, "predictions")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.filename": "epoch{epoch:04d}-step{step}"})
        parser.set_defaults({"checkpoint.auto_insert_metric_name": False})
        parser.add_argument(
            "--test_after_fit", type=bool, default=True, help="After `fit`, test the best checkpoint in the same run."
        )
        parser.add_argument(
            "--reuse_latest",
            type=bool,
            default=False,
            help="`fit` only: skip training when <save_dir>/<name>/latest was made by the same resolved config "
            "(where runs are written aside); otherwise train and say what changed.",
        )

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        """Parse, then check ``--ckpt_path`` before LightningCLI merges the checkpoint's hyper-parameters.

        ``predict`` returns nothing unless ``--return_predictions=true`` (its results are written to files).
        """
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand:
            _check_checkpoint(self.config[subcommand])
        if subcommand == "predict" and self.config.predict.get("return_predictions") is None:
            # The PredictionWriter keeps no maps; returning them too would hold every map of the data set in memory.
            self.config.predict.return_predictions = False

    def instantiate_classes(self) -> None:
        """Instantiate, showing a constructor's :class:`UserError` instead of jsonargparse's wrapper around it.

        Any other error of a constructor is a bug and keeps its traceback (wrapped by jsonargparse).
        """
        try:
            super().instantiate_classes()
        except ValueError as error:
            chain = [error]
            while chain[-1].__cause__ is not None and len(chain) < 20:
                chain.append(chain[-1].__cause__)
            own = next((cause for cause in chain if isinstance(cause, UserError)), None)
            if own is not None:
                raise own from None
            raise

    def instantiate_trainer(self, **kwargs) -> Trainer:
        """The configured trainer, plus the random states in checkpoints (exact resumes); its output folders checked."""
        trainer = super().instantiate_trainer(**kwargs)
        _check_output_dirs(trainer)
        trainer.callbacks.append(RandomStateCheckpoint())
        configured = (self.config_init[self.subcommand] if self.subcommand else self.config_init).trainer.callbacks
        if isinstance(trainer.progress_bar_callback, TQDMProgressBar) and not any(
            isinstance(callback, ProgressBar) for callback in configured or ()
        ):  # Lightning's default bar: the rich one instead
            trainer.callbacks[trainer.callbacks.index(trainer.progress_bar_callback)] = RichProgressBar()
        return trainer

    def before_instantiate_classes(self) -> None:
        """Fill ``model.init_args.categories`` from the datamodule when the config does not give it."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        model = config.get("model")
        if not isinstance(model, Namespace) or "init_args" not in model:
            return
        if model.init_args.get("categories") is None and config.get("data") is not None:
            data = config.data
            datamodule = import_class(data.class_path)(**vars(data.get("init_args", Namespace())))
            model.init_args.categories = list(datamodule.categories)

    def before_fit(self) -> None:
        """Resolve ``--ckpt_path last`` across the logger's run versions when no ``checkpoint.dirpath`` is fixed.

        Lightning looks for ``last`` only in this run's checkpoint folder, which by default is inside the new run
        directory (the next ``version_N``), so a resumed run would find nothing and silently start from scratch.
        Here ``last`` becomes the newest ``<save_dir>/<name>/version_*/checkpoints/last.ckpt``; if there is none,
        Lightning's behaviour is kept (a warning, then a fresh start).
        """
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        checkpoint = self.trainer.checkpoint_callback
        root = getattr(self.trainer.logger, "root_dir", None)
        if config.get("ckpt_path") != "last" or checkpoint is None or checkpoint.dirpath is not None or root is None:
            return
        found = sorted(Path(root).glob("version_*/checkpoints/last.ckpt"), key=lambda path: path.stat().st_mtime)
        if found:
            config.ckpt_path = str(found[-1])
            print(f"Resuming from {found[-1]}", file=sys.stderr)

    def fit(self, model: LightningModule, **kwargs) -> None:
        """``trainer.fit``, unless ``--reuse_latest`` finds the same run already made.

        LightningCLI calls a CLI method named after the subcommand instead of the trainer's.
        """
        self._reused = self._reusable_run() if self.config.fit.get("reuse_latest") else None
        if self._reused is None:
            self.trainer.fit(model, **kwargs)

    def _reusable_run(self) -> Path | None:
        """The run ``latest`` names if its ``config.yaml`` matches this fit's config, saying which or why not."""
        logger = self.trainer.logger
        if not isinstance(logger, (CSVLogger, TensorBoardLogger)):
            raise ConfigError(
                "--reuse_latest=true needs a CSV or TensorBoard logger as the first logger (its save_dir/name holds "
                f"the runs to reuse), got {type(logger).__name__}"
            )
        latest = Path(logger.root_dir) / LATEST
        if not (latest / "config.yaml").is_file():
            print(f"Training: no complete earlier run at {latest}", file=sys.stderr)
            return None
        current = yaml.safe_load(self._parser("fit").dump(self.config.fit, skip_none=False))
        changes = config_changes(yaml.safe_load((latest / "config.yaml").read_text(encoding="utf-8")), current)
        run = latest.resolve()
        if changes:
            shown = "; ".join(changes[:5]) + (f"; and {len(changes) - 5} more" if len(changes) > 5 else "")
            print(f"Training: {latest} ({run.name}) was made by another config: {shown}", file=sys.stderr)
            return None
        print(f"Reusing {latest} ({run}): made by the same config; nothing to train", file=sys.stderr)
        return run

    def after_fit(self) -> None:
        """Save the model of a fit that trained nothing, then test the best (or last) checkpoint.

        A fit with ``max_epochs: 0`` (DRDC's combined model: the stages assembled, nothing trained) writes no
        checkpoint through ``ModelCheckpoint``; ``last.ckpt`` is written here, so the run keeps the model it tests
        and the test loads it. ``--test_after_fit=false`` skips the test. A run that ends here complete becomes
        ``latest`` (rank zero moves the link). Nothing happens for a reused run.
        """
        if self._reused is not None:
            return
        checkpoint = self.trainer.checkpoint_callback
        trained_nothing = self.trainer.max_epochs == 0 and not self.trainer.interrupted
        if checkpoint is not None and trained_nothing and not checkpoint.last_model_path and checkpoint.dirpath:
            checkpoint.last_model_path = str(Path(checkpoint.dirpath) / "last.ckpt")
            self.trainer.save_checkpoint(checkpoint.last_model_path)
        if self.config.fit.get("test_after_fit", True) and not self.trainer.interrupted:
            if checkpoint is not None and (checkpoint.best_model_path or checkpoint.last_model_path):
                ckpt_path = "best" if checkpoint.best_model_path else checkpoint.last_model_path
            else:
                ckpt_path = None
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt_path)
        if self.trainer.is_global_zero and not self.trainer.interrupted:
            print(f"Latest complete run: {point_latest(run_directory(self.trainer))}")
        self._print_run_directory()

    def after_test(self) -> None:
        """Print where the results were written."""
        self._print_run_directory()

    def after_predict(self) -> None:
        """Print where the results were written."""
        self._print_run_directory()

    def _print_run_directory(self) -> None:
        if self.trainer.is_global_zero:
            run_dir = run_directory(self.trainer)  # trainer.log_dir broadcasts: a hang on rank zero alone
            print(f"Run directory: {run_dir}", file=sys.stderr if self.trainer.logger is None else sys.stdout)


def _check_output_dirs(trainer: Trainer) -> None:
    """Refuse a run folder the OS would refuse later, deep inside Lightning (a parent is a file, no permission)."""
    check_output_dir(trainer.default_root_dir, "trainer.default_root_dir")
    for logger in trainer.loggers:
        if getattr(logger, "save_dir", None):
            check_output_dir(logger.save_dir, f"{type(logger).__name__} save_dir")
    if trainer.checkpoint_callback is not None and trainer.checkpoint_callback.dirpath:
        check_output_dir(trainer.checkpoint_callback.dirpath, "checkpoint.dirpath")


def _check_checkpoint(config: Namespace) -> None:
    """Raise unless ``ckpt_path`` (if given) is a file holding a checkpoint of the configured model class."""
    ckpt_path = config.get("ckpt_path")
    if not ckpt_path or ckpt_path in _SPECIAL_CKPT_PATHS or str(ckpt_path).startswith("registry"):
        return
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise MissingFileError(
            f"--ckpt_path {ckpt_path} does not exist; give a checkpoint file (<run dir>/checkpoints/*.ckpt) or, "
            "to resume a fit, 'last'"
        )
    try:
        checkpoint = torch.load(path, weights_only=True, map_location="cpu", mmap=True)
    except pickle.UnpicklingError:  # holds objects that weights_only refuses: Lightning loads it itself
        return
    except Exception as error:  # zip, EOF and torch errors of many types
        raise ConfigError(
            f"--ckpt_path {ckpt_path} is not a readable checkpoint ({error}); give a .ckpt file written by a run"
        ) from error
    saved = (checkpoint.get("hyper_parameters") or {}).get("_class_path")
    model = config.get("model")
    configured = model.get("class_path") if isinstance(model, Namespace) else None
    if saved and configured and saved != configured:
        raise ConfigError(
            f"--ckpt_path {ckpt_path} is a checkpoint of {saved.rpartition('.')[2]} ({saved}) but the config's model "
            f"is {configured.rpartition('.')[2]}; give a checkpoint of a {configured.rpartition('.')[2]} run or the "
            "config that trained it"
        )


def main(args: list[str] | None = None) -> None:
    """Run the LightningCLI (``fit``, ``validate``, ``test``, ``predict``) on ``args`` (default: ``sys.argv``).

    The console scripts reach it through :func:`anomaly_diff.commands.main`, which answers ``--version``, ``configs``
    and ``export`` without importing Lightning. A ``--config`` may name a built-in config
    (``anomaly_diff.utils.builtin_configs``). Bad input (an :class:`~anomaly_diff.errors.UserError`) ends the process
    with exit code 1 and one line naming the culprit (``ANOMALY_DIFF_TRACEBACK=1`` shows the traceback instead); any
    other error is a bug and keeps its traceback. Configuration errors (unknown keys, wrong types, a ``--config`` that
    is neither a file nor a built-in name) end it with exit code 2.
    """
    argv = sys.argv[1:] if args is None else args
    if isinstance(argv, (list, tuple)):
        try:
            resolved = resolve_config_args(list(argv))
        except UnknownConfigError as error:
            print(f"anomaly-diff: error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
        if args is None:  # LightningCLI warns when it gets args beside a command line: the console script's argv
            sys.argv[1:] = resolved
        else:
            args = resolved
    try:
        AnomalyCLI(
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=RunRecord,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"parser_mode": "omegaconf"},
            args=args,
            auto_configure_optimizers=False,
        )
    except UserError as error:
        if os.environ.get("ANOMALY_DIFF_TRACEBACK"):
            raise
        print(f"anomaly-diff: error: {type(error).__name__}: {error}", file=sys.stderr)
        raise SystemExit(1) from error
