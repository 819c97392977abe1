"""The torch ``Dataset`` shared by every format: a sample table in, the fields of a ``Batch`` out."""

from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from torch.utils.data import Dataset

from anomaly_diff.data.image_io import load_mask, load_rgb, read_size
from anomaly_diff.data.samples import UNKNOWN_CATEGORY, Sample
from anomaly_diff.errors import DatasetError


def build_transform(image_size: int = 288, crop_size: int = 256, keep_aspect: bool = False) -> A.Compose:
    """Resize and center-crop image and mask together, as DeCo-Diff does (288 → 256).

    The image is resized bilinearly when enlarged and with area averaging when shrunk (anti-aliased, as the
    reference's PIL ``Image.resize`` is; it is bicubic there, a small difference: see the DeCo-Diff README's
    "Image preprocessing"); the mask with pixel-centre nearest neighbour
    (``INTER_NEAREST_EXACT``, the same sampling grid as the image's resize, where OpenCV's plain
    ``INTER_NEAREST`` is shifted by up to half a pixel), so it stays binary and aligned with the image.
    The image comes out as float32 in ``[0, 1]``.

    Args:
        image_size: Side of the square the image is resized to; with ``keep_aspect``, the length its shorter side
            is resized to. Defaults to 288.
        crop_size: Side of the central crop, at most ``image_size``. Defaults to 256.
        keep_aspect: Scale both sides alike (albumentations' ``SmallestMaxSize``) instead of stretching the image
            to a square, so a non-square image is not distorted; the crop then covers its centre.
            Defaults to False (the reference's square resize).

    Returns:
        A transform called as ``transform(image=(H, W, 3) uint8, mask=(H, W) uint8)`` that returns
        ``image`` ``(3, crop_size, crop_size)`` float32 and ``mask`` ``(crop_size, crop_size)`` uint8 tensors.
    """
    interpolation = {"interpolation": cv2.INTER_LINEAR, "mask_interpolation": cv2.INTER_NEAREST_EXACT,
                     "area_for_downscale": "image"}
    resize = (A.SmallestMaxSize(max_size=image_size, **interpolation) if keep_aspect
              else A.Resize(image_size, image_size, **interpolation))
    return A.Compose([resize, A.CenterCrop(crop_size, crop_size), A.ToFloat(max_value=255), ToTensorV2()])


class AnomalyDataset(Dataset):
    """Reads the samples of one split (train, val or test) of a multi-class data set.

    Args:
        samples: The sample table of the split; a sample's position is its ``index``.
        categories: The selected category names; every sample is of one of them, or of ``UNKNOWN_CATEGORY``
            (:mod:`anomaly_diff.data.samples`).
        transform: Applied to image and mask together, e.g. :func:`build_transform`.
    """

    def __init__(self, samples: Sequence[Sample], categories: Sequence[str], transform: A.Compose) -> None:
        unknown = sorted({sample.category for sample in samples} - set(categories) - {UNKNOWN_CATEGORY})
        if unknown:
            raise DatasetError(f"samples of categories {unknown} are not among the selected {sorted(categories)}")
        self.samples = list(samples)
        self.transform = transform

    def check_mask_sizes(self) -> None:
        """Compare every mask's size with its image's from the file headers (fast: no pixel is decoded).

        Raises:
            DatasetError: A mask's size differs from its image's, or a header cannot be read.
        """
        for sample in self.samples:
            if sample.mask_path is not None:
                _require_same_size(sample, read_size(sample.image_path), read_size(sample.mask_path))

    def __len__(self) -> int:
        """The number of samples."""
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Load, convert and transform one sample.

        Returns:
            The :class:`~anomaly_diff.data.batch.Batch` fields of one sample: ``image`` ``(3, H, W)``
            float32 in ``[0, 1]``, ``mask`` ``(H, W)`` float32 in ``{0, 1}`` (all zero for a normal image, and for
            an image whose mask is not known), ``has_mask`` a bool scalar (:attr:`Sample.has_mask`), ``label`` and
            ``index`` int64 scalars, ``category`` and ``path`` strings.

        Raises:
            DatasetError: The image or mask cannot be read, or the mask's size differs from the image's.
        """
        sample = self.samples[index]
        image = load_rgb(sample.image_path)
        if sample.mask_path is None:
            mask = np.zeros(image.shape[:2], dtype=np.uint8)
        else:
            mask = load_mask(sample.mask_path)
            _require_same_size(sample, image.shape[1::-1], mask.shape[::-1])
        transformed = self.transform(image=image, mask=mask)
        return {
            "image": transformed["image"],
            # The nearest-neighbour resize keeps the mask binary; ``> 0`` guarantees the {0, 1} contract.
            "mask": (transformed["mask"] > 0).float(),
            "has_mask": torch.tensor(sample.has_mask, dtype=torch.bool),
            "label": torch.tensor(sample.label, dtype=torch.long),
            "category": sample.category,
            "path": str(sample.image_path),
            "index": torch.tensor(index, dtype=torch.long),
        }


def _require_same_size(sample: Sample, image_size: tuple[int, int], mask_size: tuple[int, int]) -> None:
    """Raise unless the ``(width, height)`` of a sample's mask equals its image's."""
    if tuple(mask_size) != tuple(image_size):
        raise DatasetError(
            f"mask {sample.mask_path} is {mask_size[0]}x{mask_size[1]} (width x height) but its image "
            f"{sample.image_path} is {image_size[0]}x{image_size[1]}; a mask must have its image's size"
        )
