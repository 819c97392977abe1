"""Shared parts of the DRDC experiments on the embedded data: splits, seeds, cached maps, metrics, tables.

Protocol (issue 16): the stages are trained on the training normals of the embedded data (``data_seed`` 0, what
``configs/drdc/embedded_data.yaml`` gives) with three seeds; seed ``s`` trains both stages with ``seed_everything=s``
and samples the refinement with ``torch.manual_seed(s)``:

    python experiments/drdc_ablation.py train --seed S    # writes .cache/drdc/evidence/seed<S>/{base,refinement}/

Test-time settings are chosen on the **tuning split**, the test images of the same generator with ``data_seed`` 1
(other crops of the same photos, other defects; 8 normal and 8 defective per category), never on the **test split**
(the test images of ``data_seed`` 0, 10 + 20 per category), which is scored once, with the chosen settings.

Every map is made by the functions :class:`anomaly_diff.models.drdc.DRDC` runs (``BaseReconstructor.anomaly_map``,
``DiffusionRefiner.inpaint``/``heatmaps``, ``aggregate_refinement``, ``fuse``, ``image_score``) and scored with the
shared :class:`anomaly_diff.metrics.AnomalyMetrics`; :func:`check_against_module` asserts it on one batch. The
inpaintings of one sampling setting (what changes the reverse process) are cached under ``.cache/drdc/evidence/maps``
with the seconds they took, so the post-hoc choices (``m``, scales, heatmap mode, temporal fusion, fusion, ``gamma``)
reuse them.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

import torch
import yaml

from anomaly_diff.data import Embedded
from anomaly_diff.metrics import AnomalyMetrics
from anomaly_diff.models.components.anomaly_map import image_score
from anomaly_diff.models.drdc import DRDC, DRDCBase, DRDCRefinement, FusionConfig, InpaintingConfig
from anomaly_diff.models.drdc.fusion import aggregate_refinement, fuse

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "experiments" / "results"
EVIDENCE = REPO / ".cache" / "drdc" / "evidence"
SEEDS = (0, 1, 2)
# The tuning split is smaller than the test split (8 + 8 test images per category instead of 10 + 20) for CPU time.
SPLITS = {
    "tuning": {"data_seed": 1, "root": ".cache/embedded_tuning_drdc", "num_test_good": 8, "num_test_defective": 8},
    "test": {"data_seed": 0},
}
METRICS = ("image_AUROC", "pixel_AUROC", "pixel_AUPRC", "pixel_AUPRO")
# What changes the reverse process: one cache entry per value of these (and one patch size).
SAMPLING_FIELDS = ("num_timesteps", "start_timestep", "num_sets", "mask_layout", "mask_seed", "init", "resample",
                   "guidance_scale")


def stage_paths(seed: int) -> tuple[Path, Path]:
    """The base and refinement checkpoints of a training seed."""
    base = EVIDENCE / f"seed{seed}" / "base" / "last.ckpt"
    refinement = EVIDENCE / f"seed{seed}" / "refinement" / "last.ckpt"
    for path in (base, refinement):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: python experiments/drdc_ablation.py train --seed {seed}")
    return base, refinement


def data_module(split: str) -> Embedded:
    """The embedded data as configs/drdc/embedded_data.yaml gives it, on the tuning or the test split."""
    config = yaml.safe_load((REPO / "configs" / "drdc" / "embedded_data.yaml").read_text())["init_args"]
    config.update(SPLITS[split])
    config["root"] = str(REPO / config["root"])
    data = Embedded(**config)
    data.prepare_data()
    data.setup("test")
    return data


def batches_of(split: str) -> list[dict]:
    return list(data_module(split).test_dataloader())


def _tag(*parts) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _checkpoint_tag(path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_size}-{stat.st_mtime_ns}"


def _cached(name: str, key: list, compute) -> dict | None:
    """The stored ``{"value", "seconds", "key"}`` of a key, else ``compute()``'s, stored; ``None`` if ``compute`` is."""
    path = EVIDENCE / "maps" / f"{name}_{_tag(*key)}.pt"
    if path.is_file():
        return torch.load(path, weights_only=False)
    if compute is None:
        return None
    start = time.perf_counter()
    value = compute()
    stored = {"value": value, "seconds": time.perf_counter() - start, "key": key}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(stored, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)
    return stored


def base_maps(seed: int, split: str, batches: list[dict]) -> dict:
    """``{"value": (N, H, W) base maps, "seconds": ...}`` of a split for a training seed (cached)."""
    base_path, _ = stage_paths(seed)

    @torch.no_grad()
    def compute() -> torch.Tensor:
        base = DRDCBase.load_from_checkpoint(base_path, map_location="cpu", weights_only=False).eval()
        return torch.cat([base.model.anomaly_map(batch["image"]) for batch in batches])

    return _cached("base", [seed, split, _checkpoint_tag(base_path), len(batches)], compute)


def refinement_stage(seed: int, inpainting: InpaintingConfig) -> DRDCRefinement:
    _, path = stage_paths(seed)
    stage = DRDCRefinement.load_from_checkpoint(path, map_location="cpu", weights_only=False).eval()
    stage.model.inpainting = inpainting
    return stage


def inpaintings(seed: int, split: str, batches: list[dict], inpainting: InpaintingConfig, patch_size: int,
                cached_only: bool = False) -> dict | None:
    """``{"value": (n_t, N, 3, H, W) inpaintings, "seconds": ...}`` of one mask configuration (cached).

    Sampled with ``torch.manual_seed(seed)``, batch by batch, as a test run of the combined model does. With
    ``cached_only``, ``None`` when they were not computed before.
    """
    sampling = {name: getattr(inpainting, name) for name in SAMPLING_FIELDS}
    _, path = stage_paths(seed)

    def compute() -> torch.Tensor:
        stage = refinement_stage(seed, replace(inpainting, patch_sizes=(patch_size,)))
        torch.manual_seed(seed)
        return torch.cat([stage.model.inpaint(b["image"], stage.class_indices(b["category"]))[0] for b in batches],
                         dim=1)

    key = [seed, split, _checkpoint_tag(path), len(batches), sampling, patch_size]
    return _cached("inpaint", key, None if cached_only else compute)


def correction_maps(seed: int, split: str, batches: list[dict], inpainting: InpaintingConfig,
                    cached_only: bool = False) -> tuple[torch.Tensor, float] | None:
    """``(N, K, n_t, S, H, W)`` correction heatmaps of a split and the seconds their inpaintings took.

    With ``cached_only``, ``None`` unless every inpainting they need was computed before.
    """
    parts = [inpaintings(seed, split, batches, inpainting, size, cached_only) for size in inpainting.patch_sizes]
    if None in parts:
        return None
    stage = refinement_stage(seed, inpainting)
    images = torch.cat([batch["image"] for batch in batches])
    maps = stage.model.heatmaps(images, torch.stack([part["value"] for part in parts]))
    return maps, sum(part["seconds"] for part in parts)


def anomaly_maps(base: torch.Tensor, corrections: torch.Tensor, fusion: FusionConfig) -> torch.Tensor:
    """The ``(N, H, W)`` maps of a fusion setting (``"base"``/``"refinement"`` give one part alone)."""
    if fusion.mode == "base":
        return base
    return fuse(base, aggregate_refinement(corrections, fusion.temporal), fusion.gamma, fusion.mode)


def evaluate(maps: torch.Tensor, batches: list[dict], top_k: int = 1) -> dict[str, float]:
    """Mean over categories of the four metrics, as the Evaluator computes them (image score: top-k mean)."""
    metrics = AnomalyMetrics()
    offset = 0
    for batch in batches:
        size = len(batch["label"])
        part = maps[offset : offset + size]
        metrics.update(part, batch["mask"], image_score(part, top_k), batch["label"], batch["category"], batch["index"])
        offset += size
    return {name: float(metrics.compute()["mean"][name]) for name in METRICS}


@torch.no_grad()
def check_against_module(seed: int, inpainting: InpaintingConfig, fusion: FusionConfig, batches: list[dict]) -> None:
    """Assert that the combined LightningModule gives this module's maps on the first batch of a split."""
    base_path, refinement_path = stage_paths(seed)
    model = DRDC(None, str(base_path), str(refinement_path), inpainting=inpainting, fusion=fusion).eval()
    batch = batches[0]
    torch.manual_seed(seed)
    output = model.detect(batch)
    base = DRDCBase.load_from_checkpoint(base_path, map_location="cpu", weights_only=False).eval()
    base = base.model.anomaly_map(batch["image"])
    stage = refinement_stage(seed, inpainting)  # built before seeding: building draws random numbers
    torch.manual_seed(seed)
    corrections = stage.model.refine(batch["image"], stage.class_indices(batch["category"])).heatmaps
    torch.testing.assert_close(output.base_map, base)
    torch.testing.assert_close(output.anomaly_map, anomaly_maps(base, corrections, fusion), atol=1e-5, rtol=1e-4)


def describe(inpainting: InpaintingConfig, fusion: FusionConfig) -> dict:
    return {"inpainting": {f.name: getattr(inpainting, f.name) for f in fields(inpainting)}, "fusion": asdict(fusion)}


def summarise(per_seed: list[dict[str, float]]) -> dict:
    """Mean and sample standard deviation over seeds of each metric and of their mean (the selection criterion)."""
    rows = [{**r, "mean4": sum(r[m] for m in METRICS) / len(METRICS)} for r in per_seed]
    keys = (*METRICS, "mean4")
    return {
        "mean": {k: statistics.fmean(r[k] for r in rows) for k in keys},
        "std": {k: statistics.stdev(r[k] for r in rows) if len(rows) > 1 else 0.0 for k in keys},
        "per_seed": rows,
    }


def cells(summary: dict) -> str:
    return " | ".join(f"{100 * summary['mean'][k]:.1f} ± {100 * summary['std'][k]:.1f}" for k in (*METRICS, "mean4"))


HEADER = ("| row | image AUROC | pixel AUROC | pixel AUPRC | AUPRO | mean of the four | ms / image | what changes |\n"
          "|---|---|---|---|---|---|---|---|")

