"""What ``predict`` writes: an overlay picture and a CSV row (score and decision) per image."""

import csv
import io
import math
from pathlib import Path

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_warn

from anomaly_diff.callbacks.distributed import gather_objects
from anomaly_diff.callbacks.heatmaps import overlay_panel, sample_arrays, write_png
from anomaly_diff.data.batch import Batch
from anomaly_diff.loggers import run_directory
from anomaly_diff.utils.io import atomic_write_text

COLUMNS = ("path", "category", "category_source", "score", "threshold", "anomalous", "overlay")


class PredictionWriter(BasePredictionWriter):
    """Write ``<run dir>/predictions.csv`` and an overlay PNG per image under ``<run dir>/predictions/``.

    The CSV has one row per image, sorted by path: ``path, category, category_source, score, threshold, anomalous,
    overlay``. ``category`` is the one the model conditioned the image on (``AnomalyModule.batch_categories``):
    ``category_source`` says whether the data gave it (``given``, from ``<path>/<category>/`` or the one selected
    category) or the model predicted it (``predicted``: a flat folder of mixed categories, or
    ``model.category_source=predicted``); thresholds and overlays use it.
    ``anomalous`` is ``score > threshold``, where the threshold is ``threshold`` when given, else the category's
    threshold from the model's ``score_thresholds`` (chosen on the validation normals during ``fit``, see
    ``anomaly_diff.callbacks.NormalCalibration``); without either the threshold and the decision are empty
    and a warning names the categories. The overlay (``[image | anomaly map over image]``,
    ``predictions/<category>/<n>_<image stem>.png``, ``n`` the image's position in the sorted list) colours
    the map on the category's ``map_ranges`` (red: above the maps of the validation normals), or on the image's
    own map range when the model has none. Under DDP each process writes its images' overlays and rank zero the
    CSV; the duplicates a distributed sampler pads with are written once.

    Args:
        threshold: One image-score threshold for every category, instead of the calibrated ones. Defaults to None.
    """

    def __init__(self, threshold: float | None = None) -> None:
        super().__init__(write_interval="batch")
        self.threshold = threshold
        self._rows: dict[tuple[int, int], dict] = {}

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Forget earlier rows; warn about categories without a threshold."""
        self._rows = {}
        if self.threshold is None:
            uncalibrated = [c for c, t in zip(pl_module.categories, pl_module.score_thresholds.tolist(), strict=True)
                            if math.isnan(t)]
            if uncalibrated:
                rank_zero_warn(
                    f"no decision threshold for categories {uncalibrated}: the model was not validated during fit "
                    "(val_fraction=0, max_epochs=0 or a checkpoint from before calibration), so their `anomalous` "
                    "column stays empty; give one with --predictions.threshold=<score>"
                )

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: dict,
        batch_indices,
        batch: Batch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Write the batch's overlays and keep its CSV rows."""
        out_dir = run_directory(trainer)
        categories = pl_module.batch_categories(batch)  # the model's answer for this batch, kept: not recomputed
        sources = pl_module.category_sources(batch)
        classes = pl_module.class_indices(categories).tolist()
        thresholds = pl_module.score_thresholds.tolist()
        ranges = pl_module.map_ranges.tolist()
        for i, (path, category) in enumerate(zip(batch["path"], categories, strict=True)):
            index = int(batch["index"][i])
            image, anomaly_map, _ = sample_arrays(batch, prediction["anomaly_map"], i)
            low, high = ranges[classes[i]]
            if math.isnan(low):
                low, high = float(anomaly_map.min()), float(anomaly_map.max())
            overlay = Path("predictions") / category / f"{index:06d}_{Path(path).stem}.png"
            write_png(out_dir / overlay, overlay_panel(image, anomaly_map, None, low, high), path)
            score = float(prediction["pred_score"][i])
            threshold = self.threshold if self.threshold is not None else thresholds[classes[i]]
            decided = not math.isnan(threshold)
            self._rows[(dataloader_idx, index)] = {
                "path": path,
                "category": category,
                "category_source": sources[i],
                "score": repr(score),
                "threshold": repr(float(threshold)) if decided else "",
                "anomalous": str(score > threshold) if decided else "",
                "overlay": overlay.as_posix(),
            }

    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Write ``predictions.csv`` on global rank zero (rows gathered from every process)."""
        rows = {}
        for part in gather_objects(trainer, self._rows):
            rows.update(part)
        if not trainer.is_global_zero:
            return
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(sorted(rows.values(), key=lambda row: row["path"]))
        target = run_directory(trainer) / "predictions.csv"
        atomic_write_text(target, buffer.getvalue())
        flagged = sum(row["anomalous"] == "True" for row in rows.values())
        print(f"Predicted {len(rows)} images ({flagged} anomalous): {target}")
