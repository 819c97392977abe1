"""The test run's report: metric table, decisions at the calibrated thresholds, best and worst examples."""

import heapq
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
from lightning.pytorch import Callback, LightningModule, Trainer

from anomaly_diff.callbacks.distributed import gather_objects
from anomaly_diff.callbacks.evaluation import Evaluator
from anomaly_diff.data.batch import Batch, Prediction
from anomaly_diff.errors import ConfigError
from anomaly_diff.metrics.tables import to_markdown
from anomaly_diff.utils.io import atomic_write_text
from anomaly_diff.utils.runs import run_directory
from anomaly_diff.visualization import overlay_panel, sample_arrays, shared_colour_range, write_png

# The example kinds of a category: (title, label of the images, True when the highest scores are kept).
EXAMPLE_KINDS = {
    "found": ("Clearest detections (anomalous images, highest scores)", 1, True),
    "missed": ("Weakest detections (anomalous images, lowest scores)", 1, False),
    "false_alarms": ("Closest false alarms (normal images, highest scores)", 0, True),
}


class RunReport(Callback):
    """Write ``<run dir>/report.md`` at the end of ``test``, with its pictures in ``<run dir>/report/``.

    The report holds the per-category metric table (the :class:`~anomaly_diff.callbacks.Evaluator`'s results),
    each category's decisions at its calibrated threshold (the model's ``score_thresholds``: normal test images
    flagged, anomalous ones found) and, per category, the ``examples`` clearest and weakest detections and closest
    false alarms, drawn as ``[image | anomaly map | ground truth]`` on one colour scale. Ties in score go to the
    earlier test image. Under DDP the kept examples and scores of every process are gathered (duplicates a
    distributed sampler pads with are dropped by ``index``), so the report is that of a single-process run.

    Args:
        examples: How many pictures of each kind per category. Defaults to 2.
    """

    def __init__(self, examples: int = 2) -> None:
        if examples < 0:
            raise ConfigError(f"report.examples must be >= 0, got {examples}")
        self.examples = examples
        self._scores: dict[int, tuple[str, str, int, float]] = {}
        self._kept: dict[tuple[str, str], list] = defaultdict(list)
        self._gathered: tuple[dict, dict] | None = None

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Forget an earlier test run."""
        self._scores, self._kept, self._gathered = {}, defaultdict(list), None

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Prediction,
        batch: Batch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Keep every image's score and copies of the current best and worst examples."""
        for i, (path, category) in enumerate(zip(batch["path"], batch["category"], strict=True)):
            index, label = int(batch["index"][i]), int(batch["label"][i])
            score = float(outputs["pred_score"][i])
            self._scores[index] = (path, category, label, score)
            for kind, (_, kind_label, highest) in EXAMPLE_KINDS.items():
                if label != kind_label or self.examples == 0:
                    continue
                heap = self._kept[(category, kind)]
                rank_key = (score if highest else -score, -index)  # the larger, the more it belongs in the report
                if len(heap) == self.examples and rank_key <= heap[0][0]:
                    continue
                picture = (path, score, *sample_arrays(batch, outputs["anomaly_map"], i))
                heapq.heappush(heap, (rank_key, index, picture))
                if len(heap) > self.examples:
                    heapq.heappop(heap)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Gather the scores and kept examples of every process (a collective call: on every rank)."""
        scores, kept = {}, defaultdict(dict)
        for part_scores, part_kept in gather_objects(trainer, (self._scores, dict(self._kept))):
            scores.update(part_scores)
            for key, heap in part_kept.items():
                kept[key].update((entry[1], entry) for entry in heap)  # by index: a padded repeat counts once
        self._gathered = scores, {
            key: sorted(entries.values(), key=lambda entry: entry[:2], reverse=True)[: self.examples]
            for key, entries in kept.items()
        }
        self._scores, self._kept = {}, defaultdict(list)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Write the report on global rank zero (after every callback's epoch end: the metrics are computed)."""
        if not trainer.is_global_zero or self._gathered is None:
            return
        scores, kept = self._gathered
        run_dir = run_directory(trainer)
        evaluator = next((c for c in trainer.callbacks if isinstance(c, Evaluator)), None)
        lines = [
            "# Test report",
            "",
            f"- Model: `{type(pl_module).__name__}`, checkpoint: `{trainer.ckpt_path or 'the weights in memory'}`",
            f"- Test images: {len(scores)} ({sum(label for _, _, label, _ in scores.values())} anomalous) in "
            f"{len({category for _, category, _, _ in scores.values()})} categories",
            *(
                f"- Loaded {role}: `{record['path']}`"
                + (f" = `{record['resolved']}` (sha256 `{record['sha256'][:16]}`)" if record["sha256"] else "")
                for role, record in getattr(pl_module, "loaded_files", {}).items()
            ),
            "",
        ]
        if evaluator is not None and evaluator.results is not None:
            lines += ["## Metrics", "", to_markdown(evaluator.results)]
        lines += self._decisions(pl_module, scores)
        lines += self._examples(kept, run_dir)
        atomic_write_text(run_dir / "report.md", "\n".join(lines) + "\n")

    @staticmethod
    def _decisions(pl_module: LightningModule, scores: dict) -> list[str]:
        thresholds = dict(zip(pl_module.categories, pl_module.score_thresholds.tolist(), strict=True))
        lines = [
            "## Decisions at the calibrated thresholds",
            "",
            "An image is flagged when its score is above its category's threshold, chosen on the validation normals "
            "during `fit` (`calibration.quantile`); `n/a`: the model was not calibrated.",
            "",
            "| category | threshold | normal images flagged | anomalous images found |",
            "|---|---|---|---|",
        ]
        by_category = defaultdict(list)
        for _, category, label, score in scores.values():
            by_category[category].append((label, score))
        for category in sorted(by_category):
            threshold = thresholds[category]
            if math.isnan(threshold):
                lines.append(f"| {category} | n/a | n/a | n/a |")
                continue
            cells = []
            for label in (0, 1):
                flagged = [score > threshold for kind, score in by_category[category] if kind == label]
                share = f" ({100 * np.mean(flagged):.1f}%)" if flagged else ""
                cells.append(f"{sum(flagged)}/{len(flagged)}{share}")
            lines.append(f"| {category} | {threshold:.6g} | {cells[0]} | {cells[1]} |")
        return [*lines, ""]

    @staticmethod
    def _examples(kept: dict, run_dir: Path) -> list[str]:
        pictures = [picture for heap in kept.values() for _, _, picture in heap]
        if not pictures:
            return []
        vmin, vmax = shared_colour_range([anomaly_map for _, _, _, anomaly_map, _ in pictures])
        lines = [
            "## Examples",
            "",
            f"Each picture: image | anomaly map over the image | ground truth outlined in red. One colour scale for "
            f"all: blue {vmin:.4g} to red {vmax:.4g} (the 99.9th percentile of these maps).",
            "",
        ]
        for category in sorted({category for category, _ in kept}):
            lines += [f"### {category}", ""]
            for kind, (title, _, _) in EXAMPLE_KINDS.items():
                heap = kept.get((category, kind), [])
                if not heap:
                    continue
                lines += [f"**{title}**", ""]
                for position, (_, _, (path, score, image, anomaly_map, mask)) in enumerate(heap, start=1):
                    source = Path(path)
                    name = Path("report") / category / f"{kind}_{position}_{source.parent.name}_{source.stem}.png"
                    write_png(run_dir / name, overlay_panel(image, anomaly_map, mask, vmin, vmax), path)
                    lines += [f"{position}. score {score:.6g}, `{path}`", "", f"   ![{kind}]({name.as_posix()})", ""]
        return lines
