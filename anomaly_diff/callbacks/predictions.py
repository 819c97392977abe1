"""What ``predict`` writes: an overlay picture and a CSV row (score and decision) per image."""

import csv
import io
import math
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TextIO

import numpy as np
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_warn

from anomaly_diff.callbacks.distributed import gather_objects
from anomaly_diff.data.batch import Batch
from anomaly_diff.data.image_io import read_size
from anomaly_diff.postprocessing import decide, to_image_resolution
from anomaly_diff.utils.io import atomic_write_bytes, atomic_write_stream
from anomaly_diff.utils.runs import run_directory
from anomaly_diff.visualization import overlay_panel, sample_arrays, write_png

COLUMNS = ("path", "category", "category_source", "score", "threshold", "anomalous", "normalized_score",
           "pixel_threshold", "overlay", "map")


class PredictionWriter(BasePredictionWriter):
    """Write ``<run dir>/predictions.csv`` and an overlay PNG per image under ``<run dir>/predictions/``.

    The columns and overlays are described in the README ("Thresholds and predict"); the decisions are
    :func:`anomaly_diff.postprocessing.decide`'s, as :class:`anomaly_diff.Detector` gives them. Overlays are
    ``predictions/<category>/<n>_<image stem>.png`` (``n``: the image's position in path order), maps
    ``maps/<category>/<n>_<image stem>.npy``. No row is kept in memory: each batch's rows go to an unnamed temporary
    file, copied in order when the images came in path order, else (and under DDP, gathered on rank zero) read back
    and sorted. Under DDP each process writes its images' overlays; padded duplicates are written once.

    Args:
        threshold: One image-score threshold for every category, instead of the calibrated ones. Defaults to None.
        save_maps: Also save each raw map at its image's resolution (4 bytes per image pixel). Defaults to False.
    """

    def __init__(self, threshold: float | None = None, save_maps: bool = False) -> None:
        super().__init__(write_interval="batch")
        self.threshold = threshold
        self.save_maps = save_maps
        # The rows written so far (``dataloader_idx, index`` and the CSV columns, in the order the images came) in an
        # unnamed temporary file, gone when closed or when the process ends, so predict's memory does not grow with
        # the number of images (experiments/results/bench_memory.md).
        self._spool: TextIO | None = None
        self._last_path: str | None = None
        self._in_path_order = True

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Forget earlier rows; warn about categories without a threshold."""
        self._close_spool()
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
        """Write the batch's overlays and its CSV rows (to the temporary row file)."""
        out_dir = run_directory(trainer)
        categories = pl_module.batch_categories(batch)  # the model's answer for this batch, kept: not recomputed
        sources = pl_module.category_sources(batch)
        classes = pl_module.class_indices(categories).tolist()
        ranges = pl_module.map_ranges.tolist()
        if self._spool is None:
            out_dir.mkdir(parents=True, exist_ok=True)
            self._spool = tempfile.TemporaryFile("w+", encoding="utf-8", newline="", dir=out_dir)
            self._last_path, self._in_path_order = None, True
        spool = csv.writer(self._spool, lineterminator="\n")
        for i, (path, category) in enumerate(zip(batch["path"], categories, strict=True)):
            index = int(batch["index"][i])
            image, anomaly_map, _ = sample_arrays(batch, prediction["anomaly_map"], i)
            low, high = ranges[classes[i]]
            if math.isnan(low):
                low, high = float(anomaly_map.min()), float(anomaly_map.max())
            overlay = Path("predictions") / category / f"{index:06d}_{Path(path).stem}.png"
            write_png(out_dir / overlay, overlay_panel(image, anomaly_map, None, low, high), path)
            score = float(prediction["pred_score"][i])
            decision = decide(pl_module, classes[i], score, self.threshold)
            raw_map = self._save_map(trainer, out_dir, prediction["anomaly_map"][i], path, overlay)
            row = {
                "path": path,
                "category": category,
                "category_source": sources[i],
                "score": repr(score),
                **{key: "" if value is None else repr(value) if isinstance(value, float) else str(value)
                   for key, value in decision._asdict().items()},
                "overlay": overlay.as_posix(),
                "map": raw_map,
            }
            spool.writerow([dataloader_idx, index, *(row[column] for column in COLUMNS)])
            # Strictly increasing paths: the rows are already sorted, and no image came twice.
            self._in_path_order = self._in_path_order and (self._last_path is None or path > self._last_path)
            self._last_path = path

    def _save_map(self, trainer: Trainer, out_dir: Path, anomaly_map, path: str, overlay: Path) -> str:
        """With ``save_maps``, save the map at the image's own size; its path relative to the run, else ``""``."""
        if not self.save_maps:
            return ""
        datamodule = trainer.datamodule
        if datamodule is None:
            raise ValueError("predictions.save_maps needs the datamodule's image_size and crop_size: predict through "
                             "anomaly-diff predict or give the trainer a datamodule")
        width, height = read_size(Path(path))
        full = to_image_resolution(anomaly_map, height, width, datamodule.image_size, datamodule.crop_size,
                                   datamodule.keep_aspect)
        relative = Path("maps") / overlay.relative_to("predictions").with_suffix(".npy")
        buffer = io.BytesIO()
        np.save(buffer, full)
        atomic_write_bytes(out_dir / relative, buffer.getvalue())
        return relative.as_posix()

    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Write ``predictions.csv`` on global rank zero (rows gathered from every process)."""
        try:
            target = run_directory(trainer) / "predictions.csv"
            if trainer.world_size == 1 and self._in_path_order:
                # Already sorted and unique (one process): copied row by row, never all in memory.
                with atomic_write_stream(target) as handle:
                    count, flagged = self._write_csv(handle, self._spooled_rows())
            else:
                rows = {}
                for part in gather_objects(trainer, dict(self._spooled_rows())):
                    rows.update(part)
                if not trainer.is_global_zero:
                    return
                with atomic_write_stream(target) as handle:
                    count, flagged = self._write_csv(handle, sorted(rows.items(), key=lambda item: item[1]["path"]))
            print(f"Predicted {count} images ({flagged} anomalous): {target}")
        finally:
            self._close_spool()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """Drop the temporary row file of an interrupted predict."""
        self._close_spool()

    def _spooled_rows(self) -> Iterator[tuple[tuple[int, int], dict[str, str]]]:
        """``((dataloader_idx, index), row)`` of every row written so far, read back in order from the row file."""
        if self._spool is None:
            return
        self._spool.flush()
        self._spool.seek(0)
        for dataloader_idx, index, *values in csv.reader(self._spool):
            yield (int(dataloader_idx), int(index)), dict(zip(COLUMNS, values, strict=True))

    @staticmethod
    def _write_csv(handle: TextIO, rows: Iterable[tuple[tuple[int, int], dict[str, str]]]) -> tuple[int, int]:
        """Write the header and ``rows`` (``(key, row)`` pairs); return how many rows and how many anomalous."""
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        count = flagged = 0
        for _, row in rows:
            writer.writerow(row)
            count += 1
            flagged += row["anomalous"] == "True"
        return count, flagged

    def _close_spool(self) -> None:
        if self._spool is not None:
            self._spool.close()
        self._spool, self._last_path, self._in_path_order = None, None, True
