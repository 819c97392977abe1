"""What the benchmark scripts record about the machine they ran on."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch
import yaml
from diffusers import AutoencoderKL

from anomaly_diff.models.components.autoencoder import Codec, load_autoencoder


def machine(note: str) -> dict:
    """CPU model, cores, torch threads, RAM, platform, 1/5/15-min load averages and a free-text ``note``."""
    with open("/proc/cpuinfo") as cpuinfo:
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "unknown")
    with open("/proc/meminfo") as meminfo:
        memory_kb = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal"))
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "ram_gib": round(memory_kb / 2**20, 1),
        "platform": platform.platform(),
        "load_average": [round(load, 2) for load in os.getloadavg()],
        "note": note,
    }


def embedded_autoencoder(root: Path) -> tuple[Codec, str]:
    """The autoencoder ``configs/deco_diff/embedded.yaml`` uses, and where it came from.

    The trained one when ``make run`` has exported it; otherwise random weights in the architecture of
    ``configs/autoencoder/embedded.yaml`` (throughput does not depend on the weights).
    """
    deco = yaml.safe_load((root / "configs/deco_diff/embedded.yaml").read_text())["model"]["init_args"]
    cached = root / deco["autoencoder"]
    if (cached / "config.json").is_file():
        return load_autoencoder(cached), f"loaded from {deco['autoencoder']} = {cached.resolve()}"
    ae = yaml.safe_load((root / "configs/autoencoder/embedded.yaml").read_text())["model"]["init_args"]
    depth = len(ae["block_out_channels"])
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * depth,
        up_block_types=("UpDecoderBlock2D",) * depth,
        block_out_channels=tuple(ae["block_out_channels"]),
        layers_per_block=ae.get("layers_per_block", 1),
        latent_channels=ae.get("latent_channels", 4),
        norm_num_groups=ae.get("norm_num_groups", 16),
    )
    return vae, "random weights, architecture of configs/autoencoder/embedded.yaml"
