"""From a model's map and score to what an inspection line acts on, shared by ``Detector`` and ``anomaly-diff predict``.

- :func:`crop_box` and :func:`to_image_resolution` put a map computed on the model's input (the image resized to a
  square or keeping its aspect ratio, then centre-cropped: :func:`~anomaly_diff.data.dataset.build_transform`) back
  over the original image; pixels outside the crop are NaN (not scored).
- :func:`decide` turns a score and a map into the decision at the calibrated image threshold, a binary defect mask
  at the calibrated pixel threshold and a normalised score, from the model's calibration buffers
  (:class:`~anomaly_diff.callbacks.NormalCalibration`).
"""

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def crop_box(height: int, width: int, image_size: int, crop_size: int,
             keep_aspect: bool = False) -> tuple[int, int, int, int]:
    """Where the model's input lies in an original image: ``(top, bottom, left, right)`` in its pixels.

    The input is the image resized (to ``image_size`` squared, or with ``keep_aspect`` its shorter side to
    ``image_size``, the other rounded as albumentations' ``SmallestMaxSize`` rounds it), then the central
    ``crop_size`` square (offset ``(side - crop_size) // 2``, as albumentations' ``CenterCrop``), so the box is that
    square scaled back to the original and rounded to whole pixels.
    """
    if keep_aspect:
        scale = image_size / min(height, width)
        resized_height, resized_width = max(1, round(height * scale)), max(1, round(width * scale))
    else:
        resized_height = resized_width = image_size
    top, left = (resized_height - crop_size) // 2, (resized_width - crop_size) // 2
    scale_y, scale_x = height / resized_height, width / resized_width
    return (round(top * scale_y), round((top + crop_size) * scale_y),
            round(left * scale_x), round((left + crop_size) * scale_x))


def to_image_resolution(anomaly_map: Tensor, height: int, width: int, image_size: int, crop_size: int,
                        keep_aspect: bool = False) -> np.ndarray:
    """A map of the model's input placed over the original ``height x width`` image.

    Args:
        anomaly_map: ``(h, w)`` map of the model's input.
        height: The original image's height.
        width: The original image's width.
        image_size: The side the image was resized to before cropping (``crop_size`` when the whole image was
            resized to the model's input without a crop); with ``keep_aspect``, its shorter side.
        crop_size: The side of the model's input.
        keep_aspect: The image was resized keeping its aspect ratio (see :func:`crop_box`).

    Returns:
        ``(height, width)`` float32: the map resized bilinearly onto the crop's box, NaN (not scored) outside it.
    """
    top, bottom, left, right = crop_box(height, width, image_size, crop_size, keep_aspect)
    resized = F.interpolate(anomaly_map[None, None].float().cpu(), size=(bottom - top, right - left),
                            mode="bilinear", align_corners=False)[0, 0]
    full = np.full((height, width), np.nan, dtype=np.float32)
    full[top:bottom, left:right] = resized.numpy()
    return full


def normalized_score(score: float, threshold: float, low: float, high: float) -> float:
    """The score on ``[0, 1]`` with 0.5 at the threshold: anomalib's min-max normalisation.

    ``(score - threshold) / (high - low) + 0.5``, clipped to ``[0, 1]``, where ``low`` and ``high`` are the smallest
    and largest validation score (anomalib, ``anomalib/utils/normalization/min_max.py``). NaN when uncalibrated.
    """
    if any(math.isnan(value) for value in (threshold, low, high)):
        return math.nan
    return min(max((score - threshold) / max(high - low, 1e-12) + 0.5, 0.0), 1.0)


class Decision(NamedTuple):
    """An image's decisions (fields ``None`` where the model has no calibrated threshold for its category)."""

    threshold: float | None
    """The image threshold used: the given one, else the category's ``score_thresholds``."""
    anomalous: bool | None
    """The score is above the category's image threshold (``score_thresholds``)."""
    normalized_score: float | None
    """:func:`normalized_score` of the score."""
    pixel_threshold: float | None
    """The category's pixel threshold: the upper end of ``map_ranges``."""


def decide(model: torch.nn.Module, class_index: int, score: float, threshold: float | None = None) -> Decision:
    """The decision for one image of a category from the model's calibration buffers.

    Args:
        model: An :class:`~anomaly_diff.models.base.AnomalyModule` (its ``score_thresholds``, ``map_ranges`` and
            ``score_ranges``).
        class_index: The image's category in the model's class indices.
        score: The image score.
        threshold: An image threshold to use instead of the calibrated one.
    """
    if threshold is None:
        threshold = float(model.score_thresholds[class_index])
    low, high = model.score_ranges[class_index].tolist()
    pixel = float(model.map_ranges[class_index, 1])
    normalized = normalized_score(score, threshold, low, high)
    return Decision(
        threshold=None if math.isnan(threshold) else threshold,
        anomalous=None if math.isnan(threshold) else score > threshold,
        normalized_score=None if math.isnan(normalized) else normalized,
        pixel_threshold=None if math.isnan(pixel) else pixel,
    )
