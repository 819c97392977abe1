"""DRDC sensitivity to n_t, t_{n_t}, n_s, m and gamma on the embedded data (one at a time around the default).

As the paper's Fig. 2: each hyper-parameter is varied over a small grid while the others keep the default of
configs/drdc/embedded.yaml. Needs the embedded stage checkpoints (see experiments/drdc_ablation.py).

    python experiments/drdc_sensitivity.py [--limit-batches N] [--threads 1]

Writes experiments/results/drdc_sensitivity.md and .json. The grid is the full one (no axis shrunk): 11 sampling
settings need an inpainting of the test set (0.25 s per image for n_t = 1 up to 3 s for n_s = 9 at 1 thread on the
shared 2-core CPU, about 35 min from an empty cache); m and gamma reuse the default's. Inpaintings are cached in
.cache/drdc/experiments (shared with drdc_ablation.py), so a run after the ablation computes only n_s = 2 and 9
(549 s).
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
    METRICS,
    RESULTS,
    Setting,
    base_maps,
    correction_maps,
    data_module,
    evaluate,
    fused_maps,
    load_stages,
    machine,
)

from anomaly_diff.utils.io import atomic_write_text

DEFAULT = Setting()

GRID = {
    "n_t (num_timesteps)": [(v, DEFAULT.with_sampling(num_timesteps=v)) for v in (1, 2, 5, 10)],
    "t_{n_t} (start_timestep)": [(v, DEFAULT.with_sampling(start_timestep=v)) for v in (25, 50, 100, 200, 300)],
    "n_s (num_sets)": [(v, DEFAULT.with_sampling(num_sets=v)) for v in (1, 2, 4, 9)],
    "m (filter_size)": [(v, replace(DEFAULT, filter_size=v)) for v in (1, 3, 5, 9, 15, 21)],
    "gamma": [(v, replace(DEFAULT, gamma=v)) for v in (0.0, 1.0, 4.0, 16.0, 64.0, 256.0)],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit-batches", type=int, default=None, help="Score only the first N test batches (pilot).")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (shared CPU).")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    batches = data_module().test_dataloader()
    batches = list(batches)[: args.limit_batches]
    base_stage, _ = load_stages()
    base = base_maps(base_stage, batches)
    results: dict[str, list] = {}
    sections = []
    for parameter, points in GRID.items():
        lines = [f"## {parameter}", "", "| value | " + " | ".join(f"fused {m}" for m in METRICS)
                 + " | refinement alone pixel_AUPRC |", "|---|" + "---|" * (len(METRICS) + 1)]
        results[parameter] = []
        for value, setting in points:
            refinement, fused = fused_maps(base, correction_maps(setting, batches), setting)
            fused_result, refinement_result = evaluate(fused, batches), evaluate(refinement, batches)
            results[parameter].append({"value": value, "fused": fused_result, "refinement": refinement_result})
            marker = " (default)" if setting == DEFAULT else ""
            values = " | ".join(f"{fused_result['mean'][m]:.3f}" for m in METRICS)
            lines.append(f"| {value}{marker} | {values} | {refinement_result['mean']['pixel_AUPRC']:.3f} |")
            print(parameter, lines[-1], flush=True)
        sections += [*lines, ""]
    base_result = evaluate(base, batches)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    text = "\n".join([
        "# DRDC sensitivity on the embedded data",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine()}  ",
        f"Data: embedded, {sum(len(b['label']) for b in batches)} test images, 64 px; stages as in "
        "drdc_ablation.md  ",
        f"Default: `{json.dumps(DEFAULT.describe())}`; each table varies one hyper-parameter. Base alone: "
        + ", ".join(f"{m} {base_result['mean'][m]:.3f}" for m in METRICS) + "  ",
        f"Total time: {time.perf_counter() - started:.0f} s (inpaintings of a sampling setting already computed, "
        "e.g. by drdc_ablation.py or an earlier run, come from the cache in .cache/drdc/experiments and are not "
        "counted)",
        "",
        *sections,
    ])
    suffix = "" if args.limit_batches is None else "_pilot"
    atomic_write_text(RESULTS / f"drdc_sensitivity{suffix}.md", text)
    atomic_write_text(RESULTS / f"drdc_sensitivity{suffix}.json", json.dumps(results, indent=2, default=float))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
