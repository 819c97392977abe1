"""The LightningModule every anomaly model derives from: one train/val/test/predict path for all methods."""

from abc import abstractmethod
from collections.abc import Sequence
from typing import Literal, Protocol, runtime_checkable

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.seed import isolate_rng
from torch import Tensor
from torch.utils.data import DataLoader

from anomaly_diff.data.batch import Batch, Prediction
from anomaly_diff.data.samples import UNKNOWN_CATEGORY
from anomaly_diff.errors import ConfigError, NonFiniteLossError, NotFittedError, UnknownCategoryError
from anomaly_diff.models.components.category_classifier import CategoryClassifier
from anomaly_diff.models.components.lr_schedulers import WarmupCosineLR

# The calibration buffers (name -> shape after the category axis), NaN until NormalCalibration sets them:
# the image-score threshold, the (low, high) range of the validation normals' maps (high is also the pixel threshold)
# and the (min, max) of their image scores (for normalised scores).
CALIBRATION_BUFFERS = {"score_thresholds": (), "map_ranges": (2,), "score_ranges": (2,)}

CATEGORY_SOURCES = ("given", "predicted")
"""What a model conditions an image on (``category_source``): its given category (the predicted one only where it
is :data:`~anomaly_diff.data.samples.UNKNOWN_CATEGORY`), or always the predicted one."""


@runtime_checkable
class ValidationConsumer(Protocol):
    """A callback that reads the :class:`Prediction` ``validation_step`` returns (in ``on_validation_batch_end``).

    A model predicts the validation batches only while one of the trainer's callbacks needs them, once per batch for
    all of them.
    """

    def needs_validation_prediction(self, trainer: Trainer) -> bool:
        """Whether the current validation batches are to be predicted."""


def default_optimizer(params) -> torch.optim.Optimizer:
    """AdamW(lr=1e-4, weight_decay=1e-4), the optimiser of DeCo-Diff and the default of every model."""
    return torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4)


class AnomalyModule(LightningModule):
    """Base class of the anomaly models.

    A subclass writes ``compute_losses`` (training objective on a batch of normal images) and ``predict_anomaly`` (maps
    and scores); metrics are computed by the shared :class:`~anomaly_diff.callbacks.Evaluator` from what ``test_step``
    (and, for callbacks that need it, ``validation_step``) returns. The buffers ``score_thresholds`` ``(C,)`` and
    ``map_ranges`` ``(C, 2)`` (NaN until :class:`~anomaly_diff.callbacks.NormalCalibration` sets them) travel in every
    checkpoint. ``category_classifier``
    (:class:`~anomaly_diff.models.components.category_classifier.CategoryClassifier`) is fitted on the training
    normals at every ``fit`` start and predicts the category of images without one. A
    subclass conditions on :meth:`batch_categories`, never on ``batch["category"]`` directly, and a subclass that
    overrides ``on_fit_start`` calls ``super().on_fit_start()``.

    Args:
        categories: The category names the model is conditioned on. Their order defines the class
            index the model uses; batches are mapped onto it by name, so a test set holding a subset of
            the training categories is scored correctly.
        optimizer: A callable that builds the optimiser from the parameters (LightningCLI fills it
            from ``--model.optimizer``). Defaults to AdamW(lr=1e-4, weight_decay=1e-4).
        scheduler: An optional callable that builds a learning-rate scheduler from the optimiser.
        category_source: ``"given"`` conditions each image on its category from the data, predicted only where the
            data does not tell it; ``"predicted"`` ignores the data's categories and conditions every image on its
            predicted one (to measure what category-free inference costs on a labelled test set; the metrics are
            still grouped by the true category). Defaults to ``"given"``.
    """

    def __init__(
        self,
        categories: Sequence[str] | None,
        optimizer: OptimizerCallable = default_optimizer,
        scheduler: LRSchedulerCallable | None = None,
        category_source: Literal["given", "predicted"] = "given",
    ) -> None:
        super().__init__()
        if not categories:
            raise ConfigError(
                f"model categories are {categories!r}: give `model.init_args.categories` (the category names the "
                "model is trained on), or run through the anomaly-diff CLI, which fills them from the data"
            )
        if len(set(categories)) != len(categories):
            raise ConfigError(f"`categories` has duplicate names: {list(categories)}")
        if category_source not in CATEGORY_SOURCES:
            raise ConfigError(f"model.category_source must be one of {list(CATEGORY_SOURCES)}, got {category_source!r}")
        self.categories = list(categories)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.category_source = category_source
        for name, shape in CALIBRATION_BUFFERS.items():
            self.register_buffer(name, torch.full((len(self.categories), *shape), float("nan")))
        self.category_classifier = CategoryClassifier(len(self.categories))
        self._resolved: tuple[tuple, list[str]] | None = None  # the last batch_categories question and answer
        # The stage files a subclass loaded: role -> anomaly_diff.utils.provenance.loaded_file record.
        self.loaded_files: dict[str, dict] = {}

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
            UnknownCategoryError: A name is not one the model was trained on.
        """
        lookup = {name: index for index, name in enumerate(self.categories)}
        unknown = sorted(set(categories) - lookup.keys())
        if unknown:
            raise UnknownCategoryError(
                f"unknown categories {unknown}: this model knows {self.categories}; select only those "
                "(data.init_args.categories) or train a model on the others"
            )
        return torch.tensor([lookup[name] for name in categories], dtype=torch.long, device=self.device)

    def category_sources(self, batch: Batch) -> list[str]:
        """``"given"`` or ``"predicted"`` per sample: where the category :meth:`batch_categories` returns comes from."""
        if self.category_source == "predicted":
            return ["predicted"] * len(batch["category"])
        return ["predicted" if name == UNKNOWN_CATEGORY else "given" for name in batch["category"]]

    def batch_categories(self, batch: Batch) -> list[str]:
        """The category each image of a batch is conditioned on, given or predicted (``category_source``).

        An image gets its given category unless ``category_source`` is ``"predicted"`` or the data does not tell it
        (:data:`~anomaly_diff.data.samples.UNKNOWN_CATEGORY`); then the category classifier's. A model maps them
        onto its classes with ``self.class_indices(self.batch_categories(batch))``. The answer for the last batch is
        kept, so the model and the prediction writer ask the classifier once.

        Raises:
            NotFittedError: A category must be predicted but the classifier was never fitted (an old checkpoint).
        """
        key = (batch["image"], self.category_source, tuple(batch["category"]))
        last = self._resolved
        if last is not None and last[0][0] is key[0] and last[0][1:] == key[1:]:
            return list(last[1])
        names = list(batch["category"])
        unknown = [i for i, source in enumerate(self.category_sources(batch)) if source == "predicted"]
        if unknown:
            try:
                predicted = self.category_classifier(batch["image"][unknown]).tolist()
            except NotFittedError as error:
                raise NotFittedError(f"cannot predict the category of {batch['path'][unknown[0]]}: {error}") from None
            for i, index in zip(unknown, predicted, strict=True):
                names[i] = self.categories[index]
        self._resolved = (key, names)
        return list(names)

    def _category_training_batches(self) -> DataLoader | None:
        """The training normals in order, whole (every process fits the same means); ``None`` without datamodule."""
        datamodule = self.trainer.datamodule
        if datamodule is None:
            return None
        train = datamodule.train_dataloader()
        # A loader of its own, with its own generator: the training loader's shuffling, and any loader's worker seed,
        # would draw from the random stream that training uses.
        return DataLoader(train.dataset, batch_size=train.batch_size or 1, shuffle=False, num_workers=train.num_workers,
                          collate_fn=train.collate_fn, generator=torch.Generator().manual_seed(0))

    def on_fit_start(self) -> None:
        """Fit the category classifier on the training normals (as ``Autoencoder`` fits its feature statistics)."""
        batches = self._category_training_batches()
        if batches is None:
            rank_zero_warn("fit without a datamodule: the category classifier is not fitted, so images without a "
                           "category cannot be predicted with this model")
            return
        counts = self.category_classifier.fit(batches, self.class_indices)
        rank_zero_info(f"Category classifier fitted on {int(counts.sum())} training images")
        self._resolved = None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Leave ``category_source`` out of the saved hyper-parameters: it is a test-time choice.

        LightningCLI lets a checkpoint's hyper-parameters win over the command line, so a saved one would silently
        override ``--model.init_args.category_source`` when testing the checkpoint.
        """
        checkpoint.get("hyper_parameters", {}).pop("category_source", None)

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
                raise NonFiniteLossError(
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

    def validation_step(self, batch: Batch, batch_idx: int) -> Prediction | None:
        """Log the loss terms on held-out normal images as ``val/<name>``; return maps and scores when needed.

        The batch is predicted once when a callback needs it (:class:`ValidationConsumer`:
        validation metrics, threshold calibration), with the random states saved and restored: a sampler's noise
        would otherwise shift the random stream of every later step, so validating never changes the training.
        """
        losses = self._losses_checked(batch, "validation")
        self.log_dict(
            {f"val/{k}": v for k, v in losses.items()}, prog_bar=True, sync_dist=True, batch_size=len(batch["label"])
        )
        if not any(isinstance(callback, ValidationConsumer) and callback.needs_validation_prediction(self.trainer)
                   for callback in self.trainer.callbacks):
            return None
        with isolate_rng():
            return self.predict_anomaly(batch)

    def test_step(self, batch: Batch, batch_idx: int) -> Prediction:
        """Return maps and scores for the evaluation callback."""
        return self.predict_anomaly(batch)

    def predict_step(self, batch: Batch, batch_idx: int) -> Prediction:
        """Return maps and scores for the prediction writer."""
        return self.predict_anomaly(batch)

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

