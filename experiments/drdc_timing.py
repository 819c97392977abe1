"""Inference time per image of DRDC's base model alone vs base + refinement + fusion, in one run.

Both are timed on the same loaded combined model (configs/drdc/embedded.yaml's test-time settings), the same test
images and the same process: the base model's ``anomaly_map`` alone, then ``DRDC.detect`` (base + inpainting +
heatmaps + fusion), each after one warm-up batch, at the eval batch size of the config and at batch size 1. The stages
are those of training seed 0 of the evidence (``drdc_common.py``).

    python experiments/drdc_timing.py [--images 64] [--threads 1]

Writes experiments/results/drdc_timing.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import yaml
from bench_common import results_header
from drdc_common import REPO, RESULTS, data_module, stage_paths

from anomaly_diff.models.drdc import DRDC, FusionConfig, InpaintingConfig
from anomaly_diff.utils.io import atomic_write_text


def per_image(fn, batches: list[dict]) -> float:
    """Seconds per image of ``fn(batch)`` over ``batches`` after one warm-up call."""
    fn(batches[0])
    images, start = 0, time.perf_counter()
    for batch in batches:
        fn(batch)
        images += len(batch["label"])
    return (time.perf_counter() - start) / images


def rebatch(batches: list[dict], size: int, limit: int) -> list[dict]:
    samples = [{key: value[i] for key, value in batch.items()} for batch in batches for i in range(len(batch["label"]))]
    samples = samples[:limit]
    out = []
    for start in range(0, len(samples), size):
        chunk = samples[start : start + size]
        out.append({key: (torch.stack([s[key] for s in chunk]) if torch.is_tensor(chunk[0][key])
                          else [s[key] for s in chunk]) for key in chunk[0]})
    return out


@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="Test images timed per setting.")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (shared CPU).")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = yaml.safe_load((REPO / "configs" / "drdc" / "embedded.yaml").read_text())["model"]["init_args"]
    base_checkpoint, refinement_checkpoint = stage_paths(0)
    model = DRDC(None, str(base_checkpoint), str(refinement_checkpoint), InpaintingConfig(**settings["inpainting"]),
                 FusionConfig(**settings["fusion"])).eval()
    data = data_module("test")
    loaded = list(data.test_dataloader())
    rows, results = [], {}
    for batch_size in (data.eval_batch_size, 1):
        batches = rebatch(loaded, batch_size, args.images)
        torch.manual_seed(0)
        base = per_image(lambda b: model.model.base.anomaly_map(b["image"]), batches)
        full = per_image(model.detect, batches)
        results[batch_size] = {"base_seconds_per_image": base, "drdc_seconds_per_image": full}
        rows.append(f"| {batch_size} | {1000 * base:.1f} | {1000 * full:.1f} | {full / base:.1f}x |")
        print(rows[-1], flush=True)
    inpainting = model.model.refiner.inpainting
    passes = len(inpainting.patch_sizes) * inpainting.num_sets * inpainting.num_timesteps * inpainting.resample
    passes *= 1 if inpainting.guidance_scale in (0.0, 1.0) else 2
    header, header_md = results_header(
        "2 CPU cores shared with other jobs",
        argv=[os.path.relpath(__file__, REPO), *(sys.argv[1:] if argv is None else argv)],
    )
    test_settings = {key: value for key, value in settings.items() if "checkpoint" not in key}
    text = "\n".join([
        "# DRDC inference time: base alone vs base + refinement",
        "",
        *header_md[:-1],
        header_md[-1] + "  ",
        f"Model: configs/drdc/embedded.yaml ({json.dumps(test_settings)})"
        f", 64 px images; the refinement runs {passes} UNet passes per image "
        "(configurations x n_s x n_t x resample, x2 with guidance).  ",
        f"Images timed per row: {args.images} (after one warm-up batch).",
        "",
        "| batch size | base alone (ms / image) | base + refinement + fusion (ms / image) | ratio |",
        "|---|---|---|---|",
        *rows,
        "",
    ])
    atomic_write_text(RESULTS / "drdc_timing.md", text)
    atomic_write_text(RESULTS / "drdc_timing.json", json.dumps({**header, **results}, indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
