"""Decision thresholds and overlay colour ranges per category, chosen on the validation normals."""

from collections import defaultdict

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn

from anomaly_diff.callbacks.distributed import gather_objects
from anomaly_diff.data.batch import Batch, Prediction
from anomaly_diff.errors import ConfigError


class NormalCalibration(Callback):
    """Set each category's image-score threshold from the scores of its validation normals.

    Validation holds normal images only, so the threshold is the ``quantile`` of a category's validation scores
    (README, "Thresholds and predict"). ``map_ranges`` (the overlay colour range and, its upper end, the pixel
    threshold) is the smallest map value of the validation normals and the same quantile of their per-image map
    maxima; ``score_ranges`` keeps the smallest and largest validation score
    (:func:`anomaly_diff.postprocessing.normalized_score`). The buffers are overwritten at the end of every validation
    epoch of ``fit`` (not the sanity check), so each checkpoint carries the values of its own weights. Scores come
    from ``validation_step`` (a :class:`~anomaly_diff.models.base.ValidationConsumer`), gathered across DDP processes,
    padded duplicates dropped by ``index``.

    Args:
        quantile: The quantile of the validation normals' scores used as threshold, in ``(0, 1]``.
            Defaults to 0.99.
        every_n_epochs: Calibrate at the validations of every n-th epoch only, and at the final one (``max_epochs``
            or ``max_steps`` reached), for models whose prediction is expensive (DRDC's refinement samples 40 UNet
            passes per image). A run stopped early keeps the thresholds of its last calibration. Defaults to 1.
    """

    def __init__(self, quantile: float = 0.99, every_n_epochs: int = 1) -> None:
        if not 0 < quantile <= 1:
            raise ConfigError(f"calibration.quantile={quantile} is out of range; it must be in (0, 1]")
        if every_n_epochs < 1:
            raise ConfigError(f"calibration.every_n_epochs={every_n_epochs} is out of range; it must be >= 1")
        self.quantile = quantile
        self.every_n_epochs = every_n_epochs
        self._kept: dict[int, tuple[str, float, float, float]] = {}

    def needs_validation_prediction(self, trainer: Trainer) -> bool:
        """Whether this validation calibrates: not the sanity check; every ``every_n_epochs``-th and the final one."""
        if trainer.sanity_checking:
            return False
        epoch = trainer.current_epoch + 1
        final = (trainer.max_epochs is not None and epoch >= trainer.max_epochs) or (
            trainer.max_steps not in (None, -1) and trainer.global_step >= trainer.max_steps
        )
        return final or epoch % self.every_n_epochs == 0

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Forget the scores of the previous validation."""
        self._kept = {}

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Prediction,
        batch: Batch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Keep each image's category, score and smallest and largest map value."""
        if dataloader_idx != 0 or not self.needs_validation_prediction(trainer):
            return
        maps = outputs["anomaly_map"].detach().float().flatten(1)
        rows = zip(
            batch["index"].tolist(),
            batch["category"],
            outputs["pred_score"].detach().float().tolist(),
            maps.amin(1).tolist(),
            maps.amax(1).tolist(),
            strict=True,
        )
        self._kept.update((index, rest) for index, *rest in rows)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Write the thresholds and colour ranges of the categories seen into the model's buffers."""
        if not self.needs_validation_prediction(trainer):
            return
        kept = {}
        for part in gather_objects(trainer, self._kept):  # every rank gets every row: the buffers stay equal
            kept.update(part)
        by_category = defaultdict(list)
        for category, score, low, high in kept.values():
            by_category[category].append((score, low, high))
        if not by_category:
            return
        for category, rows in by_category.items():
            score, low, high = torch.tensor(rows, dtype=torch.float64).unbind(1)
            index = pl_module.categories.index(category)
            pl_module.score_thresholds[index] = torch.quantile(score, self.quantile).item()
            pl_module.map_ranges[index, 0] = low.min().item()
            pl_module.map_ranges[index, 1] = torch.quantile(high, self.quantile).item()
            pl_module.score_ranges[index, 0] = score.min().item()
            pl_module.score_ranges[index, 1] = score.max().item()
        missing = sorted(set(pl_module.categories) - by_category.keys())
        if missing:
            rank_zero_warn(f"no validation images of categories {missing}: their decision thresholds stay unset")
