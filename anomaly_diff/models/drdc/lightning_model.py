"""DRDC as a LightningModule: the two trained stages put together, refined and fused (``configs/drdc/<dataset>.yaml``).

The stages train apart (:class:`~.lightning_base.DRDCBase`, :class:`~.lightning_refinement.DRDCRefinement`); this
module reads their checkpoints once, copies their weights into one :class:`~.torch_model.DRDCModel` and keeps their
architecture in its own hyper-parameters (``stages``), so a DRDC checkpoint loads and tests without the stage files.
"""

from collections.abc import Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from anomaly_diff.data.batch import Batch, Prediction
from anomaly_diff.errors import ConfigError, MissingFileError
from anomaly_diff.models.base import AnomalyModule, default_optimizer
from anomaly_diff.models.drdc.fusion import FusionConfig
from anomaly_diff.models.drdc.lightning_base import DRDCBase
from anomaly_diff.models.drdc.lightning_refinement import DRDCRefinement
from anomaly_diff.models.drdc.torch_model import DRDCModel, DRDCOutput, InpaintingConfig
from anomaly_diff.utils.provenance import loaded_file
from anomaly_diff.utils.settings import as_settings

# Stage hyper-parameters that only concern the stage's own test, not the architecture DRDC rebuilds.
_STAGE_TEST_SETTINGS = ("inpainting", "temporal", "top_k")


def _load_stage(kind: type[AnomalyModule], key: str, path: str) -> tuple[AnomalyModule, dict, dict]:
    """A stage module with its checkpoint's weights, its architecture's constructor arguments, and its provenance.

    The provenance is :func:`~anomaly_diff.utils.provenance.loaded_file`'s record of the file.

    The arguments are read from the file, not from the loaded module's ``hparams``: inside a LightningCLI
    instantiation a nested module's ``save_hyperparameters`` records the outer model's arguments instead.
    """
    stage_config = "base" if kind is DRDCBase else "refinement"
    file = Path(path).expanduser()
    if not file.is_file():
        raise MissingFileError(
            f"model.{key}={path!r} does not exist: train the stage first (anomaly-diff fit --config "
            f"configs/drdc/{stage_config}/<dataset>.yaml) and point {key} at its checkpoint"
        )
    record = loaded_file(key, path, "DRDC")
    # Our own Lightning checkpoints: their hyper-parameters hold plain Python objects, not only tensors.
    checkpoint = torch.load(file, map_location="cpu", weights_only=False)
    architecture = _architecture(checkpoint["hyper_parameters"])
    stage = kind(**architecture)
    stage.on_load_checkpoint(checkpoint)
    stage.load_state_dict(checkpoint["state_dict"])
    return stage, architecture, record


def _architecture(hparams: dict) -> dict:
    """A stage's constructor arguments as plain values, without the CLI's private keys and its test settings."""
    return {
        key: asdict(value) if is_dataclass(value) else list(value) if isinstance(value, tuple) else value
        for key, value in hparams.items()
        if not key.startswith("_") and key not in _STAGE_TEST_SETTINGS
    }


class DRDC(AnomalyModule):
    """DRDC: base heatmap + diffusion refinement with dual conditioning + spatio-temporal fusion.

    Built from the two stage checkpoints the first time; afterwards from its own checkpoint alone. ``test`` and
    ``predict`` score the fused map (:meth:`detect` returns every component, :class:`~.torch_model.DRDCOutput`).
    ``fit`` (``max_epochs > 0``) fine-tunes both parts jointly on the sum of their stage losses; the configs use
    ``max_epochs: 0``, so ``fit`` only tests.

    Args:
        categories: The categories of the data (filled by the CLI); must be among the checkpoints' categories,
            whose class indices the model keeps. ``None`` uses the checkpoints' categories.
        base_checkpoint: Checkpoint of a :class:`DRDCBase` run (read only when ``stages`` is not given).
        refinement_checkpoint: Checkpoint of a :class:`DRDCRefinement` run with the same categories.
        inpainting: The test-time inpainting and heatmap settings (:class:`InpaintingConfig`).
        fusion: How the base and refinement maps are fused and scored (:class:`FusionConfig`).
        stages: The stages' architectures, ``{"base": {...}, "refinement": {...}}``: filled from the stage
            checkpoints when the model is first built and saved in its checkpoint; not set by hand.
        category_source: Test-time conditioning: each image's category from the data (``"given"``, predicted where
            the data has none) or always the predicted one (``"predicted"``; see ``AnomalyModule``).
        optimizer: Optimiser factory of the joint fine-tuning.
        scheduler: Optional learning-rate scheduler factory.
    """

    def __init__(
        self,
        categories: Sequence[str] | None = None,
        base_checkpoint: str = "",
        refinement_checkpoint: str = "",
        inpainting: InpaintingConfig | None = None,
        fusion: FusionConfig | None = None,
        stages: dict[str, dict] | None = None,
        category_source: Literal["given", "predicted"] = "given",
        optimizer: OptimizerCallable = default_optimizer,
        scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        inpainting = as_settings(InpaintingConfig, inpainting)
        fusion = as_settings(FusionConfig, fusion)
        loaded = {}
        if stages is None:
            base, base_architecture, loaded["base_checkpoint"] = _load_stage(
                DRDCBase, "base_checkpoint", base_checkpoint
            )
            refinement, refinement_architecture, loaded["refinement_checkpoint"] = _load_stage(
                DRDCRefinement, "refinement_checkpoint", refinement_checkpoint
            )
            stages = {"base": base_architecture, "refinement": refinement_architecture}
        else:  # from a DRDC checkpoint: the architectures only, the weights follow from its state dict
            base, refinement = DRDCBase(**stages["base"]), DRDCRefinement(**stages["refinement"])
        if base.categories != refinement.categories:
            raise ConfigError(
                f"model.base_checkpoint categories {base.categories} differ from model.refinement_checkpoint's "
                f"{refinement.categories}; train both stages on the same data"
            )
        unknown = sorted(set(categories or []) - set(refinement.categories))
        if unknown:
            raise ConfigError(
                f"model.categories {unknown} are not among the checkpoints' categories {refinement.categories}"
            )
        super().__init__(refinement.categories, optimizer, scheduler, category_source)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.hparams["stages"] = stages
        self.loaded_files.update(loaded)
        # The base stage's category predictor (fitted on its training normals); fit refits it on the data.
        self.category_classifier.load_state_dict(base.category_classifier.state_dict())
        refinement.model.inpainting = inpainting
        # Only the stages' torch models are kept; their LightningModules were the way to read the checkpoints.
        self.model = DRDCModel(base.model, refinement.model, fusion)
        self.max_train_timestep = refinement.max_train_timestep
        self.label_dropout = refinement.label_dropout

    def compute_losses(self, batch: Batch) -> dict[str, Tensor]:
        """Joint fine-tuning: the base and refinement objectives, summed (they share no parameters)."""
        features = self.model.base.extract(batch["image"])
        base = F.mse_loss(self.model.base.reconstruct(features), features)
        labels = self.class_indices(batch["category"])
        refinement = self.model.refiner.training_loss(
            batch["image"], labels, self.max_train_timestep, self.label_dropout
        )
        return {"loss": base + refinement, "base_loss": base, "refinement_loss": refinement}

    def detect(self, batch: Batch) -> DRDCOutput:
        """Run both branches on a batch, conditioned on each image's category (given or predicted), and fuse them."""
        return self.model(batch["image"], self.class_indices(self.batch_categories(batch)))

    def predict_anomaly(self, batch: Batch) -> Prediction:
        """The fused map and its image score."""
        output = self.detect(batch)
        return {"anomaly_map": output.anomaly_map, "pred_score": output.pred_score}
