"""Heatmap overlay pictures of test images, written into the run directory."""

from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

from anomaly_diff.callbacks.distributed import gather_objects
from anomaly_diff.data.batch import Batch, Prediction
from anomaly_diff.loggers import run_directory, wandb_loggers
from anomaly_diff.utils.io import atomic_write_bytes


def overlay_panel(
    image: np.ndarray, anomaly_map: np.ndarray, mask: np.ndarray | None, vmin: float, vmax: float
) -> np.ndarray:
    """Compose ``[image | heatmap over image | ground-truth outline]`` as one RGB picture.

    Args:
        image: ``(H, W, 3)`` float RGB in ``[0, 1]``.
        anomaly_map: ``(H, W)`` float anomaly map.
        mask: ``(H, W)`` ground truth in ``{0, 1}``; ``None`` (unknown, e.g. ``predict``) leaves out the third part.
        vmin: Map value shown as the coldest colour.
        vmax: Map value shown as the hottest colour.

    Returns:
        ``(H, 3 W, 3)`` uint8 RGB, ``(H, 2 W, 3)`` without a mask.
    """
    rgb = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    scaled = np.clip((anomaly_map - vmin) / max(vmax - vmin, 1e-12), 0, 1)
    heat = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    blended = cv2.addWeighted(rgb, 0.5, np.ascontiguousarray(heat), 0.5, 0)
    if mask is None:
        return np.concatenate([rgb, blended], axis=1)
    outlined = rgb.copy()
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(outlined, contours, -1, (255, 0, 0), 1)
    return np.concatenate([rgb, blended, outlined], axis=1)


def sample_arrays(batch: Batch, anomaly_maps: Tensor, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Copies of sample ``i``'s image ``(H, W, 3)``, anomaly map ``(H, W)`` and mask ``(H, W)`` as numpy arrays.

    The mask is ``None`` when the batch says it is not the ground truth (``has_mask`` False: an anomalous image
    without mask), so that :func:`overlay_panel` draws no (empty) outline for it.

    Copies, not views: a view of ``batch[...][i]`` (``.float().cpu()`` is a no-op on float CPU tensors) would keep
    the whole batch's image, map and mask alive for as long as the sample is kept.
    """
    return (
        batch["image"][i].permute(1, 2, 0).float().cpu().numpy().copy(),
        anomaly_maps[i].float().cpu().numpy().copy(),
        batch["mask"][i].cpu().numpy().copy() if "has_mask" not in batch or bool(batch["has_mask"][i]) else None,
    )


def shared_colour_range(maps: list[np.ndarray]) -> tuple[float, float]:
    """One colour scale for a set of pictures: the smallest value and the 99.9th percentile of the maps.

    The percentile is taken over at most about a million values (an even subsample), which is plenty for a scale.
    """
    values = torch.from_numpy(np.stack(maps)).flatten()
    return values.min().item(), torch.quantile(values[:: max(1, values.numel() // 1_000_000)], 0.999).item()


def write_png(target: Path, panel: np.ndarray, source: str) -> None:
    """Write an RGB ``panel`` as a PNG file atomically (parents created); ``source`` names the image in errors."""
    encoded, png = cv2.imencode(".png", np.ascontiguousarray(panel[..., ::-1]))
    if not encoded:
        raise ValueError(f"OpenCV could not encode the picture of {source} as PNG")
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, png.tobytes())


class HeatmapWriter(Callback):
    """Write overlay PNGs of the first test images of each category and defect type to ``<run dir>/heatmaps/``.

    All pictures of a run share one colour scale (the minimum and the 99.9th percentile of the collected
    maps), so a hot colour means the same score in every picture. With W&B loggers the same panels are also logged
    as ``wandb.Image`` under ``test/heatmaps`` (captioned ``<category>/<defect>_<stem>``). Under DDP each process
    keeps its first images and rank zero draws the first of all of them (by test-set position): the same pictures
    as in one process.

    Args:
        per_category: How many images to draw per category and defect type (the image's folder, ``good`` for
            normal ones). Defaults to 3.
    """

    def __init__(self, per_category: int = 3) -> None:
        if per_category < 0:
            raise ValueError(f"heatmaps.per_category must be >= 0, got {per_category}")
        self.per_category = per_category
        self._samples: dict[tuple[str, str], dict[int, tuple[str, np.ndarray, np.ndarray, np.ndarray]]]
        self._samples = defaultdict(dict)

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Forget the samples of an earlier test run."""
        self._samples = defaultdict(dict)

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Prediction,
        batch: Batch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Keep copies (:func:`sample_arrays`) of the first ``per_category`` samples of each category and defect."""
        for i, (category, path) in enumerate(zip(batch["category"], batch["path"], strict=True)):
            kept = self._samples[(category, Path(path).parent.name)]
            if len(kept) < self.per_category:
                kept[int(batch["index"][i])] = (path, *sample_arrays(batch, outputs["anomaly_map"], i))

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Gather the kept samples of every process; write the first of each kind on global rank zero."""
        merged = defaultdict(dict)
        for part in gather_objects(trainer, dict(self._samples)):
            for key, kept in part.items():
                merged[key].update(kept)
        self._samples = defaultdict(dict)
        if not trainer.is_global_zero:
            return
        chosen = {key: [kept[i] for i in sorted(kept)[: self.per_category]] for key, kept in merged.items()}
        chosen = {key: kept for key, kept in chosen.items() if kept}
        if not chosen:  # nothing kept (per_category=0)
            return
        vmin, vmax = shared_colour_range([m for kept in chosen.values() for _, _, m, _ in kept])
        out_dir = run_directory(trainer) / "heatmaps"  # not trainer.log_dir: it broadcasts (a hang on rank zero alone)
        panels, captions = [], []
        for (category, _), kept in chosen.items():
            for path, image, anomaly_map, mask in kept:
                name = f"{Path(path).parent.name}_{Path(path).stem}.png"
                panel = overlay_panel(image, anomaly_map, mask, vmin, vmax)
                write_png(out_dir / category / name, panel, path)
                panels.append(panel)
                captions.append(f"{category}/{Path(name).stem}")
        for logger in wandb_loggers(trainer):
            logger.log_image(key="test/heatmaps", images=panels, caption=captions)
