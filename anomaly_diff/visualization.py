"""Pictures of anomaly maps: the overlay panels that the heatmap, report and prediction callbacks write.

- :func:`sample_arrays` copies one sample of a batch (image, map, mask) out as numpy arrays.
- :func:`shared_colour_range` gives a set of pictures one colour scale.
- :func:`overlay_panel` draws ``[image | heatmap over image | ground-truth outline]``.
- :func:`write_png` writes a panel as a PNG file.
"""

from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor

from anomaly_diff.data.batch import Batch
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
    """Write an RGB ``panel`` as a PNG file through a temporary file and a rename (parents created), not synced.

    A picture can be drawn again, so it is not forced to disk (``fsync``: its cost per overlay is in
    ``experiments/results/bench_overlay_writes.md``); the rename still means a killed run leaves whole pictures or none.

    Args:
        target: The PNG file.
        panel: ``(H, W, 3)`` uint8 RGB, e.g. from :func:`overlay_panel`.
        source: The image the panel shows, named in errors.
    """
    encoded, png = cv2.imencode(".png", np.ascontiguousarray(panel[..., ::-1]))
    if not encoded:
        raise ValueError(f"OpenCV could not encode the picture of {source} as PNG")
    atomic_write_bytes(target, png.tobytes(), sync=False)
