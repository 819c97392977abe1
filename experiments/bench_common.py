"""What the benchmark scripts record about the machine they ran on."""

from __future__ import annotations

import os
import platform

import torch


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
