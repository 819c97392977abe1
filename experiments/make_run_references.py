"""The references `make run`'s DeCo-Diff is compared with, measured on exactly its test images and metrics.

experiments/embedded_baseline.py measures how hard the embedded data is, at the generated 256 px and with
scikit-learn. The numbers `make run` prints are at the working resolution of configs/data/embedded.yaml (resized
to 144, centre crop 128) and come from this project's exact metrics (AUPRO included). This script scores the
references on that same test split, through the same datamodule and :class:`~anomaly_diff.metrics.AnomalyMetrics`:

- ``feature_knn``: the strong reference of embedded_baseline.py (PatchCore without coreset: distance to the nearest
  training feature of the frozen EfficientNet-Lite0, stages 1-2 at stride 8), memory bank per category from the
  same training images DeCo-Diff trains on (the validation share held out).
- ``colour_gaussian``: the trivial reference (Mahalanobis distance of a pixel's colour to the category's training
  colours).

Maps are blurred with sigma 2 px (embedded_baseline.py's 4 px at 256), the image score is the map's maximum.

    python experiments/make_run_references.py [--data-seed 0] [--difficulty realistic]

Writes experiments/results/make_run_references.json (one entry per data seed and difficulty) and .md.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from bench_common import header_lines, results_header
from embedded_baseline import colour_gaussian, feature_knn

from anomaly_diff.data import Embedded
from anomaly_diff.metrics import METRIC_NAMES, AnomalyMetrics
from anomaly_diff.models.components.anomaly_map import gaussian_blur
from anomaly_diff.utils.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
BLUR_SIGMA = 2.0
REFERENCES = {"feature_knn": feature_knn, "colour_gaussian": colour_gaussian}


def by_category(loader) -> dict[str, dict[str, list]]:
    """Images ``(H, W, 3)`` float64 numpy, masks and labels of a loader, grouped by category."""
    groups: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for batch in loader:
        for i, category in enumerate(batch["category"]):
            groups[category]["image"].append(batch["image"][i].permute(1, 2, 0).double().numpy())
            groups[category]["mask"].append(batch["mask"][i])
            groups[category]["label"].append(batch["label"][i])
    return groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--difficulty", default="realistic")
    parser.add_argument("--root", default=None, help="data root (default: .cache/embedded for seed 0, else "
                        ".cache/embedded_<difficulty>_seed<N>)")
    args = parser.parse_args()
    root = args.root or (".cache/embedded" if args.data_seed == 0 and args.difficulty == "realistic"
                         else f".cache/embedded_{args.difficulty}_seed{args.data_seed}")
    # configs/data/embedded.yaml's settings
    data = Embedded(root=str(ROOT / root), image_size=144, crop_size=128, data_seed=args.data_seed,
                    difficulty=args.difficulty)
    data.prepare_data()
    data.setup("fit")
    data.setup("test")
    train, test = by_category(data.train_dataloader()), by_category(data.test_dataloader())
    entry = {"data_seed": args.data_seed,
             "difficulty": args.difficulty, "references": {}}
    for name, reference in REFERENCES.items():
        start = time.time()
        metrics = AnomalyMetrics()
        for category in sorted(test):
            scores = reference(np.stack(train[category]["image"]), np.stack(test[category]["image"]))
            maps = gaussian_blur(torch.from_numpy(scores).float(), BLUR_SIGMA)
            metrics.update(maps, torch.stack(test[category]["mask"]), maps.flatten(1).amax(1),
                           torch.stack(test[category]["label"]), [category] * len(maps))
        result = metrics.compute()
        entry["references"][name] = {**result, "seconds": time.time() - start}
        print(name, {m: round(100 * v, 1) for m, v in result["mean"].items()}, flush=True)
    entry = {**results_header("2 CPU cores shared with other jobs")[0], **entry}
    path = RESULTS / "make_run_references.json"
    record = json.loads(path.read_text()) if path.exists() else {}
    record[f"{args.difficulty}/seed{args.data_seed}"] = entry
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    atomic_write_text(RESULTS / "make_run_references.md", markdown(record))


def markdown(record: dict) -> str:
    lines = ["# References for `make run`, on its own test images and metrics", "",
             "Written by `experiments/make_run_references.py` (module docstring: what each reference is). Images at "
             "the working resolution of configs/data/embedded.yaml (128 px crop), the project's exact metrics. "
             "Percent; mean over categories.", ""]
    for key, entry in record.items():
        lines += [f"## {key}", "", *header_lines(entry), "", "| reference | " + " | ".join(METRIC_NAMES) + " |",
                  "|---|" + "---|" * len(METRIC_NAMES)]
        for name, result in entry["references"].items():
            lines.append(f"| {name} | " + " | ".join(f"{100 * result['mean'][m]:.1f}" for m in METRIC_NAMES) + " |")
        lines += ["", "Per category, feature_knn:", "", "| category | " + " | ".join(METRIC_NAMES) + " |",
                  "|---|" + "---|" * len(METRIC_NAMES)]
        for category, values in entry["references"]["feature_knn"]["per_category"].items():
            lines.append(f"| {category} | " + " | ".join(f"{100 * values[m]:.1f}" for m in METRIC_NAMES) + " |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
