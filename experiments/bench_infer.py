"""Images per second of DeCo-Diff inference (encode, the chain's deviation steps, two decodes, anomaly map).

Two settings, each at batch 1 and 16, in float32 and under bfloat16 autocast (the UNet; the autoencoder always
runs in float32, see ``LatentCodec``), all in one process so the ratios compare like with like:

- ``embedded``: ``configs/deco_diff/embedded.yaml`` as ``make run`` uses it (tiny UNet, 128 x 128 input, the
  autoencoder architecture of ``configs/autoencoder/embedded.yaml``).
- ``unet_S_256``: the paper's scale with UNet S on 256 x 256 input (32 x 32 latents) and an autoencoder with the
  architecture of Stable Diffusion's ``sd-vae-ft-ema``.

Weights are random (timing does not depend on them, and the pretrained VAE cannot be downloaded here); the
embedded autoencoder is loaded from ``runs/autoencoder/embedded/latest/autoencoder`` when ``make run`` has written it.

    python experiments/bench_infer.py [--repeats 3] [--repeats-batch16 1] [--device cpu]
Writes experiments/results/bench_infer.json and bench_infer.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import yaml
from bench_common import embedded_autoencoder
from bench_common import machine as bench_machine
from diffusers import AutoencoderKL

from anomaly_diff.diffusion.schedule import resolve_chain
from anomaly_diff.models.components.autoencoder import LatentCodec
from anomaly_diff.models.deco_diff.torch_model import AnomalyMapConfig, DeCoDiffModel
from anomaly_diff.utils.io import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"
# diffusers' config of stabilityai/sd-vae-ft-ema (block_out_channels, layers_per_block, scaling_factor).
SD_VAE = dict(
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=256,
    scaling_factor=0.18215,
)


def embedded_setting() -> tuple[DeCoDiffModel, int]:
    """The DeCo-Diff model of configs/deco_diff/embedded.yaml, and its input size."""
    deco = yaml.safe_load((ROOT / "configs/deco_diff/embedded.yaml").read_text())["model"]["init_args"]
    data = yaml.safe_load((ROOT / "configs/data/embedded.yaml").read_text())["init_args"]
    vae, _ = embedded_autoencoder(ROOT)
    model = DeCoDiffModel(
        LatentCodec(vae),
        num_classes=5,
        unet=deco["unet"],
        latent_channels=vae.config.latent_channels,
        timesteps=resolve_chain(deco["num_train_timesteps"], deco["reverse_steps"], deco["timesteps"]),
        anomaly_map=AnomalyMapConfig(**deco["anomaly_map"]),
    )
    return model, data["crop_size"]


def paper_setting() -> tuple[DeCoDiffModel, int]:
    """UNet S on 256 x 256 with an sd-vae-ft-ema-shaped autoencoder and the reference's map settings."""
    return DeCoDiffModel(LatentCodec(AutoencoderKL(**SD_VAE)), num_classes=15, unet="S"), 256


def images_per_second(
    model: DeCoDiffModel, size: int, batch: int, bf16: bool, repeats: int, device: str, warm_up: bool
) -> float:
    """Median images/s of ``model.detect`` over ``repeats`` timed runs, after one untimed run if ``warm_up``."""
    images = torch.rand(batch, 3, size, size, device=device)
    classes = torch.zeros(batch, dtype=torch.long, device=device)
    context = torch.autocast(device_type=device, dtype=torch.bfloat16) if bf16 else nullcontext()
    times = []
    with context:
        if warm_up:
            model.detect(images, classes)
        for _ in range(repeats):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            model.detect(images, classes)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return batch / sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per batch-1 cell (after one warm-up)")
    parser.add_argument(
        "--repeats-batch16",
        type=int,
        default=1,
        help="timed runs per batch-16 cell; no warm-up, the batch-1 cells of the same setting ran before",
    )
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)

    rows = []
    for name, build in (("embedded", embedded_setting), ("unet_S_256", paper_setting)):
        model, size = build()
        model = model.to(args.device).eval()
        for batch in (1, 16):
            for bf16 in (False, True):
                repeats = args.repeats if batch == 1 else args.repeats_batch16
                rate = images_per_second(model, size, batch, bf16, repeats, args.device, warm_up=batch == 1)
                rows.append(
                    {
                        "setting": name,
                        "chain": model.timesteps,
                        "input": size,
                        "batch": batch,
                        "precision": "bf16-autocast" if bf16 else "fp32",
                        "images_per_s": rate,
                    }
                )
                print(
                    f"{name:12s} {size}px batch {batch:2d} {rows[-1]['precision']:13s} {rate:8.2f} images/s", flush=True
                )
        del model

    def rate(setting, batch, precision):
        return next(
            r["images_per_s"] for r in rows if (r["setting"], r["batch"], r["precision"]) == (setting, batch, precision)
        )

    ratios = {}
    for setting in ("embedded", "unet_S_256"):
        for batch in (1, 16):
            ratios[f"{setting}/batch{batch}: bf16 / fp32"] = rate(setting, batch, "bf16-autocast") / rate(
                setting, batch, "fp32"
            )
        for precision in ("fp32", "bf16-autocast"):
            ratios[f"{setting}/{precision}: batch 16 / batch 1"] = rate(setting, 16, precision) / rate(
                setting, 1, precision
            )
    for batch in (1, 16):
        for precision in ("fp32", "bf16-autocast"):
            ratios[f"batch{batch}/{precision}: embedded / unet_S_256"] = rate("embedded", batch, precision) / rate(
                "unet_S_256", batch, precision
            )

    machine = {
        **bench_machine("one process; other jobs may share the cores (see the load average)"),
        "torch": torch.__version__,
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
    }
    command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    result = {
        "command": command,
        "machine": machine,
        "repeats": {"batch1": args.repeats, "batch16": args.repeats_batch16},
        "rows": rows,
        "ratios": ratios,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / "bench_infer.json", json.dumps(result, indent=2) + "\n")

    lines = [
        "# DeCo-Diff inference throughput",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['torch_threads']} torch threads, "
        f"device {machine['device']}, torch {machine['torch']}, load average at the end (1/5/15 min) "
        f"{machine['load_average']}  ",
        f"Median of {args.repeats} timed runs after one warm-up at batch 1, {args.repeats_batch16} timed run(s) at "
        "batch 16 (kernels already warm); random weights. One image = encode, "
        "one UNet pass per timestep of the setting's chain, two decodes, the anomaly map. bf16 autocast covers the "
        "UNet; the autoencoder runs in float32.",
        "",
        "| setting | chain | input | batch | precision | images/s |",
        "|---|---|---|---|---|---|",
        *[
            f"| {r['setting']} | {r.get('chain', '')} | {r['input']} | {r['batch']} | {r['precision']} "
            f"| {r['images_per_s']:.2f} |"
            for r in rows
        ],
        "",
        "| ratio | value |",
        "|---|---|",
        *[f"| {k} | {v:.2f} |" for k, v in ratios.items()],
        "",
    ]
    atomic_write_text(RESULTS / "bench_infer.md", "\n".join(lines))
    print(f"wrote {RESULTS / 'bench_infer.md'}")


if __name__ == "__main__":
    main()
