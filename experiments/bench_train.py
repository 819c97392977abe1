"""Images per second and peak memory of DeCo-Diff training steps at the embedded setting.

One training step = ``DeCoDiff.compute_losses`` (encode or look up the latents, patch corruption, the forward
diffusion, the UNet, the MSE loss), ``backward`` and an AdamW step, on the model of
``configs/deco_diff/embedded.yaml`` (tiny UNet, 128 x 128 input, the config's AdamW settings; no learning-rate
scheduler, whose step is negligible). The autoencoder is loaded from ``runs/autoencoder/embedded/latest/autoencoder``
when ``make run`` has written it, else it has the architecture of ``configs/autoencoder/embedded.yaml`` with random
weights (timing does not depend on the weights).

Eight settings: batch 4 and 16, float32 and bfloat16 autocast, latents cached and encoded every step:

- ``bf16-autocast`` does what Lightning's ``--trainer.precision=bf16-mixed`` does on CPU: ``compute_losses`` runs
  under ``torch.autocast("cpu", torch.bfloat16)``, ``backward`` and the optimiser step outside it, the weights stay
  float32. The autoencoder always runs in float32 (``LatentCodec``).
- ``cached`` is ``cache_latents=True`` as in the embedded config: the batch's latents were encoded once (in the
  first warm-up step) and every timed step looks them up by path, as in every epoch after the first. ``uncached``
  encodes the batch with the frozen autoencoder every step (``cache_latents=False``).

The steps are driven directly, not through a Lightning ``Trainer``, so that each step can be timed alone (the
Trainer adds its data loader, logging and progress bar to every step, and a start-up of seconds per setting) and the
numbers compare the model's work; what runs is the same ``compute_losses``, autocast, ``backward`` and optimiser.
Every step uses the same batch of random images (5 categories, fixed paths).

Each setting runs in a fresh process (``python experiments/bench_train.py --child ...``) with ``--threads`` torch
threads (``OMP_NUM_THREADS`` and ``torch.set_num_threads``; default 1, so that a 2-core machine shared with other jobs
is not oversubscribed): ``--warmup`` untimed steps, then the median of ``--steps`` timed steps. Peak memory is the
child's peak resident set size (``ru_maxrss`` read by the parent with ``os.wait4``: Python, torch, the model, the
optimiser state and the step's activations), and the child also records its RSS just before the first step, so the
difference is what training steps add on top of the built model.

Usage (from the repository root): ``make bench-train`` or ``.venv/bin/python experiments/bench_train.py``.
Writes experiments/results/bench_train.json and bench_train.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch
import yaml
from bench_common import embedded_autoencoder, header_lines, results_header

from anomaly_diff.utils.io import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"
BATCHES = (4, 16)
PRECISIONS = ("fp32", "bf16-autocast")
LATENTS = ("cached", "uncached")
CATEGORIES = ("a", "b", "c", "d", "e")  # the embedded set's category count


def rss_bytes() -> int:
    """The current resident set size of this process."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def embedded_module(cache_latents: bool):
    """``DeCoDiff`` as configs/deco_diff/embedded.yaml builds it (minus the scheduler), its input size and AE source."""
    from anomaly_diff.models.deco_diff import DeCoDiff
    from anomaly_diff.models.deco_diff.torch_model import AnomalyMapConfig

    deco = yaml.safe_load((ROOT / "configs/deco_diff/embedded.yaml").read_text())["model"]["init_args"]
    data = yaml.safe_load((ROOT / "configs/data/embedded.yaml").read_text())["init_args"]
    vae, source = embedded_autoencoder(ROOT)
    adamw = deco["optimizer"]["init_args"]
    module = DeCoDiff(
        categories=list(CATEGORIES),
        autoencoder=vae,
        unet=deco["unet"],
        num_train_timesteps=deco["num_train_timesteps"],
        beta_schedule=deco["beta_schedule"],
        reverse_steps=deco["reverse_steps"],
        timesteps=deco["timesteps"],
        patch_sizes=deco["patch_sizes"],
        patch_size_probs=deco["patch_size_probs"],
        max_mask_ratio=deco["max_mask_ratio"],
        max_shuffle_ratio=deco["max_shuffle_ratio"],
        anomaly_map=AnomalyMapConfig(**deco["anomaly_map"]),
        cache_latents=cache_latents,
        optimizer=lambda params: torch.optim.AdamW(params, **adamw),
    )
    return module, data["crop_size"], source


def child(batch: int, precision: str, latents: str, warmup: int, steps: int, threads: int, out: Path) -> None:
    """Run one setting and write its step times and memory to ``out``."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    # The autoencoder is passed as a module; Lightning warns that save_hyperparameters keeps it (harmless here).
    warnings.filterwarnings("ignore", message="Attribute 'autoencoder' is an instance of `nn.Module`")
    module, size, source = embedded_module(cache_latents=latents == "cached")
    module.train()
    optimizer = module.configure_optimizers()
    data = {
        "image": torch.rand(batch, 3, size, size),
        "category": [CATEGORIES[i % len(CATEGORIES)] for i in range(batch)],
        "path": [f"image_{i}.png" for i in range(batch)],
        "label": torch.zeros(batch, dtype=torch.long),
    }
    context = torch.autocast(device_type="cpu", dtype=torch.bfloat16) if precision == "bf16-autocast" else nullcontext()
    rss_before = rss_bytes()
    times, losses = [], []
    for step in range(warmup + steps):
        start = time.perf_counter()
        with context:
            loss = module.compute_losses(data)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        elapsed = time.perf_counter() - start
        losses.append(loss.item())
        if step >= warmup:
            times.append(elapsed)
    result = {
        "autoencoder": source,
        "input": size,
        "trainable_parameters": sum(p.numel() for p in module.parameters() if p.requires_grad),
        "threads": torch.get_num_threads(),
        "step_s": times,
        "losses_finite": all(map(lambda v: v == v and abs(v) != float("inf"), losses)),
        "cached_latents": len(module._latent_cache),
        "rss_before_steps_bytes": rss_before,
        "peak_rss_in_child_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    out.write_text(json.dumps(result))


def run_setting(batch: int, precision: str, latents: str, args: argparse.Namespace, work: Path) -> dict:
    """One setting in a fresh process; its median images/s and whole-process peak RSS."""
    name = f"batch{batch}/{precision}/{latents}"
    out = work / f"{name.replace('/', '_')}.json"
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, __file__, "--child", str(batch), precision, latents, "--warmup", str(args.warmup),
         "--steps", str(args.steps), "--threads", str(args.threads), "--out", str(out)],
        env=env,
    )
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{name} failed with exit code {os.waitstatus_to_exitcode(status)}")
    measured = json.loads(out.read_text())
    median = statistics.median(measured["step_s"])
    row = {
        "batch": batch,
        "precision": precision,
        "latents": latents,
        "images_per_s": batch / median,
        "median_step_s": median,
        "min_step_s": min(measured["step_s"]),
        "max_step_s": max(measured["step_s"]),
        "peak_rss_bytes": usage.ru_maxrss * 1024,
        "rss_before_steps_bytes": measured["rss_before_steps_bytes"],
        "added_by_steps_bytes": usage.ru_maxrss * 1024 - measured["rss_before_steps_bytes"],
        "process_wall_s": time.perf_counter() - started,
        "load_average_1min": [load_before, os.getloadavg()[0]],
        **{k: measured[k] for k in ("autoencoder", "input", "trainable_parameters", "threads", "losses_finite",
                                    "cached_latents", "step_s")},
    }
    print(
        f"{name:28s} {row['images_per_s']:7.2f} images/s (median step {median:.3f} s), peak RSS "
        f"{row['peak_rss_bytes'] / 2**20:.0f} MiB (+{row['added_by_steps_bytes'] / 2**20:.0f} by the steps)",
        flush=True,
    )
    return row


def ratios(rows: list[dict]) -> dict[str, float]:
    """bf16 / fp32, batch 16 / batch 4 and cached / uncached images/s, each with the other two factors fixed."""
    rate = {(r["batch"], r["precision"], r["latents"]): r["images_per_s"] for r in rows}
    out = {}
    for batch in BATCHES:
        for latents in LATENTS:
            out[f"bf16 / fp32 (batch {batch}, {latents})"] = (
                rate[batch, "bf16-autocast", latents] / rate[batch, "fp32", latents]
            )
    for precision in PRECISIONS:
        for latents in LATENTS:
            out[f"batch 16 / batch 4 ({precision}, {latents})"] = (
                rate[16, precision, latents] / rate[4, precision, latents]
            )
    for batch in BATCHES:
        for precision in PRECISIONS:
            out[f"cached / uncached (batch {batch}, {precision})"] = (
                rate[batch, precision, "cached"] / rate[batch, precision, "uncached"]
            )
    return out


def markdown(report: dict) -> str:
    first = report["rows"][0]
    step = {(r["batch"], r["precision"], r["latents"]): r["median_step_s"] for r in report["rows"]}
    lines = [
        "# DeCo-Diff training throughput and peak memory (embedded setting)",
        "",
        *header_lines(report)[:-1],
        header_lines(report)[-1] + "  ",
        f"Wall time of the whole benchmark: {report['wall_s']:.0f} s.",
        "",
        f"Model: `configs/deco_diff/embedded.yaml` (tiny UNet, {first['trainable_parameters']:,} trainable parameters, "
        f"{first['input']} x {first['input']} input, AdamW lr {report['adamw']['lr']}, weight decay "
        f"{report['adamw']['weight_decay']}); autoencoder: {first['autoencoder']}. One step = `compute_losses` + "
        f"`backward` + AdamW step on the same batch of random images; {report['warmup']} untimed warm-up steps, then "
        f"the median of {report['steps']} timed steps, each setting in a fresh process. bf16-autocast = Lightning's "
        "`bf16-mixed` on CPU (autocast around the loss, float32 weights; the autoencoder stays float32). Cached = "
        "latents looked up by path (encoded once, in the first warm-up step); uncached = encoded every step. Peak "
        "RSS = the whole process (`ru_maxrss`); added by the steps = peak RSS minus the RSS just before the first "
        "step (model built, inputs made).",
        "",
        "| batch | precision | latents | images/s | median step (s) | min / max step (s) | peak RSS (MiB) "
        "| added by the steps (MiB) | load before / after |",
        "|---|---|---|---|---|---|---|---|---|",
        *[
            f"| {r['batch']} | {r['precision']} | {r['latents']} | {r['images_per_s']:.2f} | {r['median_step_s']:.3f} "
            f"| {r['min_step_s']:.3f} / {r['max_step_s']:.3f} | {r['peak_rss_bytes'] / 2**20:.0f} "
            f"| {r['added_by_steps_bytes'] / 2**20:.0f} | "
            + " / ".join(f"{v:.1f}" for v in r["load_average_1min"])
            + " |"
            for r in report["rows"]
        ],
        "",
        "| ratio of images/s | value |",
        "|---|---|",
        *[f"| {k} | {v:.2f} |" for k, v in report["ratios"].items()],
        "",
        "Share of an uncached step spent encoding (1 - cached step / uncached step; the frozen autoencoder, always "
        "float32): "
        + ", ".join(
            f"{1 - step[b, p, 'cached'] / step[b, p, 'uncached']:.0%} at batch {b} {p}"
            for b in BATCHES
            for p in PRECISIONS
        )
        + ".",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per setting")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per setting (the median is reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each run")
    parser.add_argument("--child", nargs=3, metavar=("BATCH", "PRECISION", "LATENTS"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        batch, precision, latents = args.child
        child(int(batch), precision, latents, args.warmup, args.steps, args.threads, args.out)
        return
    if args.warmup < 1:
        parser.error("--warmup must be at least 1 (the first step fills the latent cache)")

    torch.set_num_threads(args.threads)
    work = ROOT / ".cache" / "bench_train"
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows = [
        run_setting(batch, precision, latents, args, work)
        for batch in BATCHES
        for precision in PRECISIONS
        for latents in LATENTS
    ]
    wall = time.perf_counter() - started
    deco = yaml.safe_load((ROOT / "configs/deco_diff/embedded.yaml").read_text())["model"]["init_args"]
    header, _ = results_header(
        f"one process per setting (each with the torch threads above), run one after another at niceness "
        f"{os.nice(0)}; other jobs may share the cores (see the load averages)"
    )
    report = {
        **header,
        "warmup": args.warmup,
        "steps": args.steps,
        "adamw": deco["optimizer"]["init_args"],
        "wall_s": wall,
        "rows": rows,
        "ratios": ratios(rows),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / "bench_train.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(RESULTS / "bench_train.md", markdown(report))
    print(f"wrote {RESULTS / 'bench_train.md'} ({wall:.0f} s)")


if __name__ == "__main__":
    main()
