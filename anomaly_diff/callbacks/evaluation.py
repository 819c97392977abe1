"""The evaluation callback: anomaly metrics of what ``test_step`` returns, logged and written as result files."""

from collections.abc import Mapping

from lightning.pytorch import Callback, LightningModule, Trainer
from rich.console import Console

from anomaly_diff.data.batch import Batch, Prediction
from anomaly_diff.errors import InvalidSampleError
from anomaly_diff.loggers import log_resolved_config, wandb_loggers
from anomaly_diff.metrics import AnomalyMetrics
from anomaly_diff.metrics.tables import to_csv, to_json, to_markdown, to_rich_table, to_table
from anomaly_diff.utils.io import atomic_write_text
from anomaly_diff.utils.runs import run_directory


class Evaluator(Callback):
    """Compute :class:`~anomaly_diff.metrics.AnomalyMetrics` over the test set (and optionally validation).

    In ``test`` it collects ``outputs["anomaly_map"]`` and ``outputs["pred_score"]`` with the batch's ``mask``,
    ``has_mask``, ``label``, ``category`` and ``index`` (which drops the samples a distributed sampler repeats), logs
    ``test/<metric>`` and ``test/<metric>/<category>``, keeps :attr:`results`, and on global rank zero writes
    ``metrics.json``, ``metrics_table.csv`` and ``metrics.md`` into the run directory and prints the table (the
    README's "Data without masks" says how unavailable pixel metrics show). The CSV is not ``metrics.csv``:
    Lightning's ``CSVLogger`` owns that name there. With W&B loggers it also logs the table as
    ``test/metrics_table``. With ``evaluate_validation=True`` it is a
    :class:`~anomaly_diff.models.base.ValidationConsumer` and logs ``val/<metric>`` (:attr:`validation_results`), no
    files.

    Args:
        evaluate_validation: Also evaluate validation epochs (not the sanity check). Defaults to False.
        num_bins: ``None`` for exact pixel metrics, else the number of score bins (see ``AnomalyMetrics``).
            Defaults to None.
        score_range: The ``(low, high)`` range of the bins in binned mode. Defaults to ``(0.0, 1.0)``.
        aupro_fpr_limit: The FPR up to which AUPRO integrates. Defaults to 0.3.
        chunk_size: The most pixel scores sorted at once in exact mode. Defaults to ``2**22``.

    Attributes:
        results: The last test result, ``{"mean": {...}, "per_category": {...}}``, or ``None``.
        validation_results: The last validation result, or ``None``.
    """

    def __init__(
        self,
        evaluate_validation: bool = False,
        num_bins: int | None = None,
        score_range: tuple[float, float] = (0.0, 1.0),
        aupro_fpr_limit: float = 0.3,
        chunk_size: int = 1 << 22,
    ) -> None:
        self.evaluate_validation = evaluate_validation
        self._metrics = {
            stage: AnomalyMetrics(
                num_bins=num_bins, score_range=score_range, aupro_fpr_limit=aupro_fpr_limit, chunk_size=chunk_size
            )
            for stage in ("test", "val")
        }
        self.results: dict[str, dict] | None = None
        self.validation_results: dict[str, dict] | None = None
        self._config_logged_for: int | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Log the resolved config to the W&B loggers (once per trainer)."""
        if self._config_logged_for != id(trainer):  # fit then test in one trainer: once
            log_resolved_config(trainer)
            self._config_logged_for = id(trainer)

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start an empty metric on the module's device."""
        self._start("test", trainer, pl_module)

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Prediction,
        batch: Batch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Add the batch's maps and scores."""
        self._update("test", trainer, outputs, batch, dataloader_idx)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Compute, log, keep and (on global rank zero) write and print the test metrics."""
        self.results = self._finish("test", pl_module)
        if trainer.is_global_zero:
            run_dir = run_directory(trainer)
            atomic_write_text(run_dir / "metrics.json", to_json(self.results))
            atomic_write_text(run_dir / "metrics_table.csv", to_csv(self.results))
            atomic_write_text(run_dir / "metrics.md", to_markdown(self.results))
            Console().print(to_rich_table(self.results, title=f"Test metrics ({run_dir})"))
            columns, rows = to_table(self.results)
            for logger in wandb_loggers(trainer):
                logger.log_table(key="test/metrics_table", columns=columns, data=rows)

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start an empty metric when validation is evaluated."""
        if self.needs_validation_prediction(trainer):
            self._start("val", trainer, pl_module)

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Prediction,
        batch: Batch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Add the batch's maps and scores."""
        if self.needs_validation_prediction(trainer):
            self._update("val", trainer, outputs, batch, dataloader_idx)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Compute, log and keep the validation metrics."""
        if self.needs_validation_prediction(trainer):
            self.validation_results = self._finish("val", pl_module)

    def needs_validation_prediction(self, trainer: Trainer) -> bool:
        """Whether validation is evaluated: with ``evaluate_validation``, not in the sanity check."""
        return self.evaluate_validation and not trainer.sanity_checking

    def _start(self, stage: str, trainer: Trainer, pl_module: LightningModule) -> None:
        metric = self._metrics[stage]
        metric.reset()
        metric.to(pl_module.device)
        metric.show_progress = trainer.is_global_zero and trainer.progress_bar_callback is not None

    def _update(self, stage: str, trainer: Trainer, outputs: Prediction, batch: Batch, dataloader_idx: int) -> None:
        if not isinstance(outputs, Mapping) or not {"anomaly_map", "pred_score"} <= outputs.keys():
            found = sorted(outputs) if isinstance(outputs, Mapping) else type(outputs).__name__
            raise ValueError(
                f"the {stage} step must return a dict with 'anomaly_map' (B, H, W) and 'pred_score' (B,) "
                f"(anomaly_diff.data.batch.Prediction), got {found}"
            )
        loaders = trainer.num_test_batches if stage == "test" else trainer.num_val_batches
        num_loaders = len(loaders) if isinstance(loaders, list) else 1
        try:
            self._metrics[stage].update(
                outputs["anomaly_map"],
                batch["mask"],
                outputs["pred_score"],
                batch["label"],
                batch["category"],
                batch["index"] * num_loaders + dataloader_idx,  # unique across dataloaders
                batch.get("has_mask"),
            )
        except InvalidSampleError as error:
            raise InvalidSampleError(f"{stage} image {batch['path'][error.index]}: {error}") from error

    def _finish(self, stage: str, pl_module: LightningModule) -> dict[str, dict]:
        metric = self._metrics[stage]
        results = metric.compute()
        metric.reset()  # frees the collected maps
        # values not available (no ground-truth mask) are not logged: a logger would show them as NaN, unexplained;
        # nor is a mean none of whose categories has the metric available
        missing = {
            category: set(results["not_available"].get(category, {}).get("metrics", ()))
            for category in results["per_category"]
        }
        logged = {
            f"{stage}/{name}": value
            for name, value in results["mean"].items()
            if not all(name in names for names in missing.values())
        }
        for category, values in results["per_category"].items():
            logged |= {
                f"{stage}/{name}/{category}": value for name, value in values.items() if name not in missing[category]
            }
        pl_module.log_dict(logged, sync_dist=False)
        return results
