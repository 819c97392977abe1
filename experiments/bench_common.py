"""What every experiment script records with its results: the shared header (``results_header``), the machine.

Every script that writes experiments/results/ starts its JSON with ``results_header``'s dict and its markdown with
its lines: the exact command, the git commit (``+dirty`` when tracked files differ from it), the date, the machine
and the versions of python, torch, lightning, diffusers and anomaly-diff (plus any a script adds).
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
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


REPO = Path(__file__).resolve().parent.parent
VERSIONED = ("torch", "lightning", "diffusers", "anomaly-diff")


def git_commit() -> str:
    """``git rev-parse HEAD`` of the repository, ``+dirty`` when tracked files differ from it; "unknown" outside git."""

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)

    head = git("rev-parse", "HEAD")
    if head.returncode != 0:
        return "unknown (not a git checkout)"
    dirty = git("diff", "--quiet", "HEAD").returncode != 0
    return head.stdout.strip() + ("+dirty" if dirty else "")


def versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Python's version and those of torch, lightning, diffusers, anomaly-diff and the ``extra`` distributions."""

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return {"python": platform.python_version(), **{name: installed(name) for name in dict.fromkeys(
        (*VERSIONED, *extra))}}


def header_lines(header: dict) -> list[str]:
    """The markdown lines of a header (``results_header``'s dict, or an older record's subset of it)."""
    lines = []
    if "command" in header:
        lines.append(f"Command: `{header['command']}`  ")
    if "commit" in header:
        lines.append(f"Commit: {header['commit']}  ")
    if "date" in header:
        lines.append(f"Date: {header['date']}  ")
    host = header.get("machine")
    if isinstance(host, dict):
        parts = [
            f"{host[key]}{unit}"
            for key, unit in (("cpu", ""), ("cores", " cores"), ("torch_threads", " torch thread(s)"),
                              ("ram_gib", " GiB RAM"), ("platform", ""))
            if key in host
        ]
        if "load_average" in host:
            parts.append(f"load average (1/5/15 min) {host['load_average']}")
        lines.append("Machine: " + ", ".join(parts) + (f"; {host['note']}" if host.get("note") else "") + ".  ")
    elif host:
        lines.append(f"Machine: {host}  ")
    if "versions" in header:
        lines.append("Versions: " + ", ".join(f"{k} {v}" for k, v in header["versions"].items()) + ".")
    return lines


def results_header(
    note: str = "", argv: list[str] | None = None, extra_versions: tuple[str, ...] = ()
) -> tuple[dict, list[str]]:
    """The shared header of a script's results: its JSON dict and its markdown lines.

    The dict holds ``command`` (``sys.executable`` and ``argv``, default ``sys.argv``, shell-quoted), ``commit``
    (``git_commit``), ``date`` (UTC), ``machine`` (``machine(note)``) and ``versions`` (``versions(extra_versions)``).
    Call it when the results are written, so that the load average is the one at the end of the run.
    """
    header = {
        "command": shlex.join([sys.executable, *(sys.argv if argv is None else argv)]),
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": machine(note),
        "versions": versions(extra_versions),
    }
    return header, header_lines(header)


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
