"""What makes a run reproducible: its environment recorded next to its config, and resumable random state.

- :class:`RunRecord` is the CLI's config saver: besides LightningCLI's ``config.yaml`` (which holds the resolved
  config, ``seed_everything`` included) it writes ``environment.json`` into the run directory: the anomaly-diff
  version (``anomaly_diff``, as ``anomaly-diff --version`` prints it), the seed, Python,
  the platform, the versions of the packages the results depend on, and the stage files the model loaded (path as
  configured, resolved path and content hash: ``loaded``).
- :class:`RandomStateCheckpoint` stores the global random states (torch, CUDA, NumPy, Python) in every checkpoint
  and restores them when a fit resumes, so a run resumed from the checkpoint of epoch ``k`` draws the same
  shuffles, crops and noise in epoch ``k + 1`` as the run that was not interrupted. (Lightning itself does not
  save them.)
"""

import importlib.metadata
import json
import platform
import random
import sys
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback

from anomaly_diff import __version__
from anomaly_diff.utils.io import atomic_write_text
from anomaly_diff.utils.runs import run_directory

# Distributions whose versions change results (numerics, data loading, metrics).
RECORDED_PACKAGES = (
    "anomaly-diff",
    "torch",
    "torchvision",
    "lightning",
    "torchmetrics",
    "diffusers",
    "timm",
    "numpy",
    "scipy",
    "albumentations",
    "opencv-python-headless",
    "opencv-python",
    "pillow",
    "scikit-image",
    "jsonargparse",
)


def environment_record(seed: int | None) -> dict[str, Any]:
    """The anomaly-diff version, seed, interpreter, platform, torch build and versions of :data:`RECORDED_PACKAGES`.

    Args:
        seed: The run's ``seed_everything`` (``None`` if unseeded).

    Returns:
        A JSON-serialisable dict; packages that are not installed are left out.
    """
    packages = {}
    for name in RECORDED_PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {
        "anomaly_diff": __version__,
        "seed": seed,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "torch_num_threads": torch.get_num_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "packages": packages,
    }


class RunRecord(SaveConfigCallback):
    """LightningCLI's ``config.yaml`` writer that also writes ``environment.json`` (:func:`environment_record`)."""

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Write ``<run dir>/environment.json`` atomically (called on global rank zero after ``config.yaml``)."""
        seed = self.config.get("seed_everything")
        run_dir = run_directory(trainer)  # not trainer.log_dir: it broadcasts, and only rank zero is here
        record = environment_record(seed if isinstance(seed, int) and not isinstance(seed, bool) else None)
        record["loaded"] = getattr(pl_module, "loaded_files", {})
        atomic_write_text(run_dir / "environment.json", json.dumps(record, indent=2) + "\n")


def collect_random_states() -> dict[str, Any]:
    """The global random states of torch, CUDA, NumPy and Python, as tensors and plain Python values.

    NumPy's key array is stored as a tensor, so that checkpoints holding it still load with ``weights_only=True``.
    """
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "torch.cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }


def set_random_states(states: dict[str, Any]) -> None:
    """Restore what :func:`collect_random_states` returned (CUDA states only where CUDA is available)."""
    torch.set_rng_state(states["torch"])
    if states.get("torch.cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["torch.cuda"])
    kind, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


class RandomStateCheckpoint(Callback):
    """Save the global random states in checkpoints and restore them when a fit resumes from one.

    Lightning restores callback states only for ``fit``, before the run starts; the sanity validation that follows
    runs with isolated random state, so the first draw after the restore is the next epoch's data loader, as in
    the run that was not interrupted.
    """

    def state_dict(self) -> dict[str, Any]:
        """The current random states (:func:`collect_random_states`)."""
        return {"random_states": collect_random_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the saved random states."""
        if "random_states" in state_dict:
            set_random_states(state_dict["random_states"])
