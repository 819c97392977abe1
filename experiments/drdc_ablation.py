"""DRDC ablation on the embedded data: base alone, refinement alone, fused, and one row per design choice.

Needs the two stage checkpoints of the embedded configs:

    anomaly-diff fit --config configs/drdc/base/embedded.yaml
    anomaly-diff fit --config configs/drdc/refinement/embedded.yaml
    python experiments/drdc_ablation.py [--limit-batches N]

The last two rows use a second base checkpoint with UniAD's token geometry, if present:

    anomaly-diff fit --config configs/drdc/base/embedded.yaml --model.init_args.input_size=224 \\
        --model.init_args.neighbourhood=7 --checkpoint.dirpath=.cache/drdc/embedded/base_224

Writes experiments/results/drdc_ablation.md and .json. Every row changes one choice of the default setting
(``DEFAULT``, the values of configs/drdc/embedded.yaml) and is scored on the whole embedded test set (150 images,
64 px) with the shared metrics (mean over the 5 categories).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import replace

import torch
from drdc_common import (
    BASE_224_CKPT,
    HEADER,
    RESULTS,
    Setting,
    base_maps,
    check_against_module,
    correction_maps,
    data_module,
    evaluate,
    fused_maps,
    load_stages,
    machine,
    row,
    test_batches,
)

from anomaly_diff.models.drdc import DRDCBase
from anomaly_diff.utils.io import atomic_write_text

DEFAULT = Setting()

# (name, setting, what changes) — one design choice each, against DEFAULT.
CHOICES = [
    ("heatmap: high-pass mean_m(abs(r - mean_m(r)))", replace(DEFAULT, heatmap_mode="highpass"),
     "only the detail a mean filter of size m removes"),
    ("temporal: last timestep only", replace(DEFAULT, temporal="last"), "no temporal fusion"),
    ("scales: full resolution only", replace(DEFAULT, scales=(1,)), "no heatmap of the 2x down-sampled residual"),
    ("inpainting configurations: squares 4 and 8", replace(DEFAULT, patch_sizes=(4, 8)),
     "fuses a second mask configuration"),
    ("inpainting configurations: squares 8 and 16", replace(DEFAULT, patch_sizes=(8, 16)),
     "fuses a second mask configuration"),
    ("mask layout: random", DEFAULT.with_sampling(mask_layout="random"), "seeded random assignment of squares"),
    ("start of hidden region: pure noise", DEFAULT.with_sampling(init="noise"), "RePaint's start instead of SDEdit's"),
    ("no inpainting (n_s = 1)", DEFAULT.with_sampling(num_sets=1),
     "every pixel hidden at once: plain noise-and-denoise reconstruction"),
    ("test-time condition: none, unconditional (w = 0)", DEFAULT.with_sampling(guidance_scale=0.0),
     "null class: neither model nor test-time conditioning"),
    ("test-time condition: class only (w = 1)", DEFAULT.with_sampling(guidance_scale=1.0),
     "model conditioning without guidance"),
    ("test-time condition: CFG w = 4", DEFAULT.with_sampling(guidance_scale=4.0), "stronger guidance"),
    ("fusion: additive, gamma = 16", replace(DEFAULT, fusion="additive"), "base + gamma * refinement"),
    ("fusion: additive, gamma = 720", replace(DEFAULT, fusion="additive", gamma=720.0),
     "base + gamma * refinement, gamma = 16 x the mean base map value (about 45)"),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit-batches", type=int, default=None, help="Score only the first N test batches (pilot).")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    data = data_module()
    batches = test_batches(data)[: args.limit_batches]
    base_stage, _ = load_stages()
    base = base_maps(base_stage, batches)
    default_corrections = correction_maps(DEFAULT, batches)
    check_against_module(DEFAULT, batches, base, default_corrections)
    print("combined LightningModule reproduces the default maps on the first batch")

    results: dict[str, dict] = {}
    lines = [HEADER]

    def add(name: str, maps: torch.Tensor, setting: Setting | None, note: str) -> None:
        result = evaluate(maps, batches)
        results[name] = {"result": result, "setting": setting.describe() if setting else None, "note": note}
        lines.append(row(name, result, note))
        print(lines[-1], flush=True)

    refinement, fused = fused_maps(base, default_corrections, DEFAULT)
    add("base alone", base, None, "transformer feature reconstruction (configs/drdc/base/embedded.yaml)")
    add("refinement alone", refinement, DEFAULT, "aggregated correction heatmaps")
    add("base + refinement fused (default)", fused, DEFAULT, "configs/drdc/embedded.yaml")
    for name, setting, note in CHOICES:
        add(name, fused_maps(base, correction_maps(setting, batches), setting)[1], setting, note)
    if BASE_224_CKPT.is_file():
        uniad = DRDCBase.load_from_checkpoint(BASE_224_CKPT, map_location="cpu", weights_only=False).eval()
        uniad_base = base_maps(uniad, batches)
        note = "UniAD's geometry: 224 px backbone input, 14 x 14 tokens, 7 x 7 mask (instead of 128, 8 x 8, 5 x 5)"
        add("base alone, 224 px / 14 x 14 tokens", uniad_base, None, note)
        add("fused with the 224 px base", fused_maps(uniad_base, default_corrections, DEFAULT)[1], DEFAULT, note)

    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    default = DEFAULT.describe()
    text = "\n".join([
        "# DRDC ablation on the embedded data",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine()}  ",
        f"Data: embedded, {sum(len(b['label']) for b in batches)} test images of 5 categories at 64 px "
        "(configs/drdc/embedded_data.yaml); stages: .cache/drdc/embedded/{base,refinement}/last.ckpt "
        "(configs/drdc/base/embedded.yaml, configs/drdc/refinement/embedded.yaml)  ",
        f"Default setting: `{json.dumps(default)}`  ",
        "Metrics: mean over categories of the shared AnomalyMetrics (exact; AUPRC = average precision, AUPRO up to "
        "FPR 0.3); image score = maximum of the map. Every row below the third changes one choice of the default.  ",
        f"Total time: {time.perf_counter() - started:.0f} s",
        "",
        *lines,
        "",
    ])
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.limit_batches is None else "_pilot"
    atomic_write_text(RESULTS / f"drdc_ablation{suffix}.md", text)
    atomic_write_text(RESULTS / f"drdc_ablation{suffix}.json", json.dumps(results, indent=2, default=float))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
