"""Shared parts of the DRDC experiments on the embedded data: stages, test set, cached inpaintings, metrics.

Every map is computed with the functions :class:`anomaly_diff.models.drdc.DRDC` uses (``base_heatmap``,
``DiffusionRefiner.inpaint``/``heatmaps``, ``aggregate_refinement``, ``fuse``, ``image_score``) and scored with the
shared :class:`anomaly_diff.metrics.AnomalyMetrics` (what the Evaluator computes), so the numbers are those
``anomaly-diff fit --config configs/drdc/embedded.yaml`` would report for the same settings;
:func:`check_against_module` asserts it on one batch. The inpaintings of one sampling setting (everything that
changes the reverse process) are cached under ``.cache/drdc/experiments``, so the post-hoc choices (``m``, scales,
heatmap mode, temporal fusion, fusion, ``gamma``) reuse them.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import yaml

from anomaly_diff.data import Embedded
from anomaly_diff.metrics import AnomalyMetrics
from anomaly_diff.models.components.anomaly_map import image_score
from anomaly_diff.models.drdc import DRDC, DRDCBase, DRDCRefinement
from anomaly_diff.models.drdc.fusion import aggregate_refinement, fuse

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "experiments" / "results"
CACHE = REPO / ".cache" / "drdc" / "experiments"
BASE_CKPT = REPO / ".cache" / "drdc" / "embedded" / "base" / "last.ckpt"
BASE_224_CKPT = REPO / ".cache" / "drdc" / "embedded" / "base_224" / "last.ckpt"
REFINEMENT_CKPT = REPO / ".cache" / "drdc" / "embedded" / "refinement" / "last.ckpt"
METRICS = ("image_AUROC", "pixel_AUROC", "pixel_AUPRC", "pixel_AUPRO")


@dataclass(frozen=True)
class Sampling:
    """What changes the reverse process (one cache entry per patch size)."""

    num_timesteps: int = 5
    start_timestep: int = 100
    num_sets: int = 4
    patch_size: int = 8
    mask_layout: str = "interleaved"
    init: str = "noised_input"
    guidance_scale: float = 2.0


@dataclass(frozen=True)
class Setting:
    """One full DRDC test-time setting (the combined config's model keys)."""

    sampling: Sampling = field(default_factory=Sampling)
    patch_sizes: tuple[int, ...] = (8,)
    filter_size: int = 9
    scales: tuple[int, ...] = (1, 2)
    heatmap_mode: str = "residual"
    temporal: str = "mean"
    gamma: float = 16.0
    fusion: str = "multiplicative"

    def with_sampling(self, **changes) -> Setting:
        return replace(self, sampling=replace(self.sampling, **changes))

    def describe(self) -> dict:
        out = asdict(self)
        out.update(out.pop("sampling"))
        out.pop("patch_size")
        return out


def data_module() -> Embedded:
    """The embedded data exactly as configs/drdc/embedded_data.yaml gives it."""
    config = yaml.safe_load((REPO / "configs" / "drdc" / "embedded_data.yaml").read_text())["init_args"]
    config["root"] = str(REPO / config["root"])
    data = Embedded(**config)
    data.prepare_data()
    data.setup("test")
    return data


def test_batches(data: Embedded) -> list[dict]:
    return list(data.test_dataloader())


def load_stages() -> tuple[DRDCBase, DRDCRefinement]:
    for path in (BASE_CKPT, REFINEMENT_CKPT):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: train it with configs/drdc/{path.parent.name}/embedded.yaml")
    base = DRDCBase.load_from_checkpoint(BASE_CKPT, map_location="cpu", weights_only=False).eval()
    return base, refinement_for(Sampling())


def refinement_for(sampling: Sampling, **heatmap) -> DRDCRefinement:
    """The refinement stage with a sampling setting (and heatmap settings), as the combined model builds it."""
    overrides = {
        "num_timesteps": sampling.num_timesteps,
        "start_timestep": sampling.start_timestep,
        "num_sets": sampling.num_sets,
        "patch_sizes": (sampling.patch_size,),
        "mask_layout": sampling.mask_layout,
        "init": sampling.init,
        "guidance_scale": sampling.guidance_scale,
        **heatmap,
    }
    return DRDCRefinement.load_from_checkpoint(
        REFINEMENT_CKPT, map_location="cpu", weights_only=False, **overrides
    ).eval()


def _checkpoint_tag() -> str:
    stat = REFINEMENT_CKPT.stat()
    return hashlib.sha1(f"{stat.st_size}-{stat.st_mtime_ns}".encode()).hexdigest()[:10]


@torch.no_grad()
def base_maps(base: DRDCBase, batches: list[dict]) -> torch.Tensor:
    """``(N, H, W)`` base heatmaps of the test set."""
    return torch.cat([base.base_heatmap(batch["image"]) for batch in batches])


@torch.no_grad()
def inpaintings(sampling: Sampling, batches: list[dict], log=print) -> tuple[torch.Tensor, float]:
    """``(n_t, N, 3, H, W)`` inpaintings of the test set (cached) and the seconds they took to compute."""
    images = sum(len(batch["label"]) for batch in batches)
    key = hashlib.sha1(json.dumps([asdict(sampling), images], sort_keys=True).encode()).hexdigest()[:12]
    path = CACHE / f"inpaint_{_checkpoint_tag()}_{key}.pt"
    if path.is_file():
        stored = torch.load(path, weights_only=False)
        return stored["inpainted"], stored["seconds"]
    refinement = refinement_for(sampling)
    torch.manual_seed(0)
    start = time.perf_counter()
    parts = []
    for batch in batches:
        parts.append(refinement.model.inpaint(batch["image"], refinement.class_indices(batch["category"]))[0])
    seconds = time.perf_counter() - start
    inpainted = torch.cat(parts, dim=1)
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save({"inpainted": inpainted, "seconds": seconds, "sampling": asdict(sampling)}, path)
    log(f"  inpainted {inpainted.shape[1]} images with {sampling} in {seconds:.0f} s")
    return inpainted, seconds


def correction_maps(setting: Setting, batches: list[dict], log=print) -> torch.Tensor:
    """``(N, K, n_t, S, H, W)`` correction heatmaps of the test set for a setting."""
    refinement = refinement_for(
        setting.sampling, filter_size=setting.filter_size, scales=setting.scales, heatmap_mode=setting.heatmap_mode
    )
    per_size = [inpaintings(replace(setting.sampling, patch_size=p), batches, log)[0] for p in setting.patch_sizes]
    images = torch.cat([batch["image"] for batch in batches])
    return refinement.model.heatmaps(images, torch.stack(per_size))


def evaluate(maps: torch.Tensor, batches: list[dict], top_k: int = 1) -> dict:
    """Metrics of ``(N, H, W)`` maps (image score: top-k mean of each map), as the Evaluator computes them."""
    metrics = AnomalyMetrics()
    offset = 0
    for batch in batches:
        size = len(batch["label"])
        part = maps[offset : offset + size]
        metrics.update(part, batch["mask"], image_score(part, top_k), batch["label"], batch["category"], batch["index"])
        offset += size
    return metrics.compute()


def fused_maps(base: torch.Tensor, corrections: torch.Tensor, setting: Setting) -> tuple[torch.Tensor, torch.Tensor]:
    """The aggregated refinement map and the fused map, ``(N, H, W)`` each."""
    refinement = aggregate_refinement(corrections, setting.temporal)
    return refinement, fuse(base, refinement, setting.gamma, setting.fusion)


@torch.no_grad()
def check_against_module(setting: Setting, batches: list[dict], base: torch.Tensor, corrections: torch.Tensor) -> None:
    """Assert that the combined LightningModule gives this script's maps on the first test batch."""
    sampling = setting.sampling
    model = DRDC(
        None, str(BASE_CKPT), str(REFINEMENT_CKPT), num_timesteps=sampling.num_timesteps,
        start_timestep=sampling.start_timestep, num_sets=sampling.num_sets, patch_sizes=setting.patch_sizes,
        mask_layout=sampling.mask_layout, init=sampling.init, guidance_scale=sampling.guidance_scale,
        filter_size=setting.filter_size, scales=setting.scales, heatmap_mode=setting.heatmap_mode,
        temporal=setting.temporal, gamma=setting.gamma, fusion=setting.fusion,
    ).eval()
    torch.manual_seed(0)
    output = model.detect(batches[0])
    size = len(batches[0]["label"])
    _, fused = fused_maps(base[:size], corrections[:size], setting)
    torch.testing.assert_close(output.base_map, base[:size])
    torch.testing.assert_close(output.correction_maps, corrections[:size], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(output.anomaly_map, fused, atol=1e-5, rtol=1e-4)


def machine() -> str:
    load = os.getloadavg()
    return (
        f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPU cores shared with other jobs "
        f"(load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at the end), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )


def row(name: str, result: dict, note: str = "") -> str:
    values = " | ".join(f"{result['mean'][metric]:.3f}" for metric in METRICS)
    return f"| {name} | {values} | {note} |"


HEADER = "| setting | " + " | ".join(METRICS) + " | what changes |\n|---|" + "---|" * (len(METRICS) + 1)
