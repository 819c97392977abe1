"""Heatmap overlay pictures of test images, written into the run directory."""

from collections import defaultdict
from pathlib import Path

import numpy as np
from lightning.pytorch import Callback, LightningModule, Trainer

from anomaly_diff.callbacks.distributed import gather_objects
from anomaly_diff.data.batch import Batch, Prediction
from anomaly_diff.loggers import wandb_loggers
from anomaly_diff.utils.runs import run_directory
from anomaly_diff.visualization import overlay_panel, sample_arrays, shared_colour_range, write_png


class HeatmapWriter(Callback):
    """Write overlay PNGs of the first test images of each category and defect type to ``<run dir>/heatmaps/``.

    All pictures of a run share one colour scale (the minimum and the 99.9th percentile of the collected
    maps), so a hot colour means the same score in every picture. With W&B loggers the same panels are also logged
    as ``wandb.Image`` under ``test/heatmaps`` (captioned ``<category>/<defect>_<stem>``). Under DDP each process
    keeps its first images and rank zero draws the first of all of them (by test-set position): the same pictures
    as in one process.

    Args:
        per_category: How many images to draw per category and defect type (the image's folder, ``good`` for
            normal ones). Defaults to 3.
    """

    def __init__(self, per_category: int = 3) -> None:
        if per_category < 0:
            raise ValueError(f"heatmaps.per_category must be >= 0, got {per_category}")
        self.per_category = per_category
        self._samples: dict[tuple[str, str], dict[int, tuple[str, np.ndarray, np.ndarray, np.ndarray]]]
        self._samples = defaultdict(dict)

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Forget the samples of an earlier test run."""
        self._samples = defaultdict(dict)

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Prediction,
        batch: Batch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Keep copies (:func:`sample_arrays`) of the first ``per_category`` samples of each category and defect."""
        for i, (category, path) in enumerate(zip(batch["category"], batch["path"], strict=True)):
            kept = self._samples[(category, Path(path).parent.name)]
            if len(kept) < self.per_category:
                kept[int(batch["index"][i])] = (path, *sample_arrays(batch, outputs["anomaly_map"], i))

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Gather the kept samples of every process; write the first of each kind on global rank zero."""
        merged = defaultdict(dict)
        for part in gather_objects(trainer, dict(self._samples)):
            for key, kept in part.items():
                merged[key].update(kept)
        self._samples = defaultdict(dict)
        if not trainer.is_global_zero:
            return
        chosen = {key: [kept[i] for i in sorted(kept)[: self.per_category]] for key, kept in merged.items()}
        chosen = {key: kept for key, kept in chosen.items() if kept}
        if not chosen:  # nothing kept (per_category=0)
            return
        vmin, vmax = shared_colour_range([m for kept in chosen.values() for _, _, m, _ in kept])
        out_dir = run_directory(trainer) / "heatmaps"  # not trainer.log_dir: it broadcasts (a hang on rank zero alone)
        panels, captions = [], []
        for (category, _), kept in chosen.items():
            for path, image, anomaly_map, mask in kept:
                name = f"{Path(path).parent.name}_{Path(path).stem}.png"
                panel = overlay_panel(image, anomaly_map, mask, vmin, vmax)
                write_png(out_dir / category / name, panel, path)
                panels.append(panel)
                captions.append(f"{category}/{Path(name).stem}")
        for logger in wandb_loggers(trainer):
            logger.log_image(key="test/heatmaps", images=panels, caption=captions)
