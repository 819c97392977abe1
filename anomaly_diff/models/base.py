"""The LightningModule every anomaly model derives from: one train/val/test/predict path for all methods."""

from abc import abstractmethod
from collections.abc import Sequence

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from anomaly_diff.data.batch import Batch, Prediction
from anomaly_diff.models.components.lr_schedulers import WarmupCosineLR

# The calibration buffers (name -> shape after the category axis), NaN until NormalCalibration sets them.
CALIBRATION_BUFFERS = {"score_thresholds": (), "map_ranges": (2,)}


def default_optimizer(params) -> torch.optim.Optimizer:
    """AdamW(lr=1e-4, weight_decay=1e-4), the optimiser of DeCo-Diff and the default of every model."""
    return torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4)


class AnomalyModule(LightningModule):
    """Base class of the anomaly models.

    A subclass writes two methods: ``compute_losses`` (training objective on a batch of normal
    images) and ``predict_anomaly`` (maps and scores). Metrics are never computed here: the
    shared :class:`~anomaly_diff.callbacks.Evaluator` reads what ``test_step`` returns.

    Each category's decision threshold and overlay colour range live in the buffers ``score_thresholds``
    ``(C,)`` and ``map_ranges`` ``(C, 2)`` (NaN until set), so every checkpoint carries them;
    :class:`~anomaly_diff.callbacks.NormalCalibration` sets them from the validation normals during ``fit``.

    Args:
        categories: The category names the model is conditioned on. Their order defines the class
            index the model uses; batches are mapped onto it by name, so a test set holding a subset of
            the training categories is scored correctly.
        optimizer: A callable that builds the optimiser from the parameters (LightningCLI fills it
            from ``--model.optimizer``). Defaults to AdamW(lr=1e-4, weight_decay=1e-4).
        scheduler: An optional callable that builds a learning-rate scheduler from the optimiser.
    """

    def __init__(
        self,
        categories: Sequence[str] | None,
        optimizer: OptimizerCallable = default_optimizer,
        scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        if not categories:
            raise ValueError(
                f"model categories are {categories!r}: give `model.init_args.categories` (the category names the "
                "model is trained on), or run through the anomaly-diff CLI, which fills them from the data"
            )
        if len(set(categories)) != len(categories):
            raise ValueError(f"`categories` has duplicate names: {list(categories)}")
        self.categories = list(categories)
        self.optimizer = optimizer
        self.scheduler = scheduler
        for name, shape in CALIBRATION_BUFFERS.items():
            self.register_buffer(name, torch.full((len(self.categories), *shape), float("nan")))

    @property
    def num_classes(self) -> int:
        """The number of categories the model is conditioned on."""
        return len(self.categories)

    def class_indices(self, categories: Sequence[str]) -> Tensor:
        """Map category names onto the model's class indices.

        Args:
            categories: One category name per sample.

        Returns:
            ``(B,)`` int64 class indices on the module's device.

        Raises:
            KeyError: A name is not one the model was trained on.
        """
        lookup = {name: index for index, name in enumerate(self.categories)}
        unknown = sorted(set(categories) - lookup.keys())
        if unknown:
            raise KeyError(
                f"unknown categories {unknown}: this model knows {self.categories}; select only those "
                "(data.init_args.categories) or train a model on the others"
            )
        return torch.tensor([lookup[name] for name in categories], dtype=torch.long, device=self.device)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Load checkpoints written before the calibration buffers existed as uncalibrated (NaN)."""
        state = checkpoint.get("state_dict")
        if state is not None:
            for name in CALIBRATION_BUFFERS:
                state.setdefault(name, torch.full_like(getattr(self, name), float("nan")))

    @abstractmethod
    def compute_losses(self, batch: Batch) -> dict[str, Tensor]:
        """Return the scalar loss terms of a batch; the key ``"loss"`` is the one optimised."""

    @abstractmethod
    def predict_anomaly(self, batch: Batch) -> Prediction:
        """Return the anomaly map ``(B, H, W)`` and image score ``(B,)`` of a batch."""

    def _losses_checked(self, batch: Batch, stage: str) -> dict[str, Tensor]:
        losses = self.compute_losses(batch)
        for name, value in losses.items():
            if not torch.isfinite(value).all():
                raise FloatingPointError(
                    f"non-finite {stage} loss term {name!r} = {value.item()} at global step {self.global_step} "
                    f"(epoch {self.current_epoch}); lower the learning rate, check the input data, "
                    "or train with --trainer.precision=32-true"
                )
        return losses

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """Optimise ``compute_losses(batch)["loss"]`` and log every term as ``train/<name>``."""
        losses = self._losses_checked(batch, "training")
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, prog_bar=True, batch_size=len(batch["label"]))
        return losses["loss"]

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        """Log the loss terms on held-out normal images as ``val/<name>``."""
        losses = self._losses_checked(batch, "validation")
        self.log_dict(
            {f"val/{k}": v for k, v in losses.items()}, prog_bar=True, sync_dist=True, batch_size=len(batch["label"])
        )

    def test_step(self, batch: Batch, batch_idx: int) -> Prediction:
        """Return maps and scores for the evaluation callback."""
        return self.predict_anomaly(batch)

    def predict_step(self, batch: Batch, batch_idx: int) -> Prediction:
        """Return maps and scores with the sample's path and category."""
        prediction = self.predict_anomaly(batch)
        return {**prediction, "path": batch["path"], "category": batch["category"]}

    def configure_optimizers(self):
        """Build the optimiser (and scheduler, if one is configured) from the constructor's callables.

        A :class:`~anomaly_diff.models.components.lr_schedulers.WarmupCosineLR` without ``total_steps`` gets the
        run's number of optimiser steps (``trainer.estimated_stepping_batches``).
        """
        optimizer = self.optimizer(self.parameters())
        if self.scheduler is None:
            return optimizer
        scheduler = self.scheduler(optimizer)
        if isinstance(scheduler, WarmupCosineLR) and scheduler.total_steps is None:
            scheduler.set_total_steps(self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

