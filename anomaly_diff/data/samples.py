"""The sample table: one record per image, built by each format's layout parser.

A format module only turns its on-disk layout into a list of :class:`Sample`; reading, transforming
and splitting are shared. The helpers here list image files, match masks to images by file stem and
carve seeded subsets, and they report what they ignore instead of dropping it silently.
"""

import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np

from anomaly_diff.errors import DatasetError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
"""File extensions read as images (compared case-insensitively: VisA ships ``.JPG``)."""

UNLABELLED = -1
"""The label of an image to predict (normal or anomalous is what the model is asked)."""

UNKNOWN_CATEGORY = "<unknown>"
"""The category of an image to predict whose category the data does not tell (several categories are selected and
it is not under ``<path>/<category>/``): the model predicts it (``AnomalyModule.batch_categories``). No folder can
be named so on Windows, and no category name comes from anywhere but folder names and configs."""

MISSING_MASKS_HINT = (
    "to accept anomalous images without masks, set data.init_args.allow_missing_masks=true: their categories then "
    "get image metrics only, pixel metrics are reported as not available"
)
"""Appended to every missing-mask error: how to accept such images deliberately."""

T = TypeVar("T")


@dataclass(frozen=True)
class Sample:
    """One image of a data set and what is known about it.

    Attributes:
        image_path: The image file.
        mask_path: The ground-truth mask of an anomalous image; ``None`` for a normal image, an image to predict,
            and an anomalous image whose mask is not known (see :attr:`has_mask`; the datamodule accepts those only
            with ``allow_missing_masks``).
        label: ``1`` for an anomalous image, ``0`` for a normal one, ``-1`` (:data:`UNLABELLED`) for an image to
            predict whose state is unknown.
        category: The category (product) name; :data:`UNKNOWN_CATEGORY` for an image to predict of untold category.
        defect_type: ``"good"`` for a normal image, else the defect name (the directory it came from);
            ``"unknown"`` for an image to predict.
        split: ``"train"`` (normal images the model may learn from), ``"test"`` or ``"predict"`` (unlabelled
            images to score, see :func:`prediction_samples`).
    """

    image_path: Path
    mask_path: Path | None
    label: int
    category: str
    defect_type: str
    split: Literal["train", "test", "predict"]

    def __post_init__(self) -> None:
        """Check the invariants every parser must honour."""
        if self.split not in ("train", "test", "predict"):
            raise DatasetError(f"{self.image_path}: split must be 'train', 'test' or 'predict', got {self.split!r}")
        if (self.split == "predict") != (self.label == UNLABELLED):
            raise DatasetError(
                f"{self.image_path}: label {self.label!r} in split {self.split!r}; images to predict, and only "
                f"they, have the label {UNLABELLED} (unknown)"
            )
        if self.category == UNKNOWN_CATEGORY and self.split != "predict":
            raise DatasetError(
                f"{self.image_path}: category {UNKNOWN_CATEGORY!r} in split {self.split!r}; only images to predict may "
                "have an unknown category"
            )
        if self.label not in (0, 1, UNLABELLED):
            raise DatasetError(f"{self.image_path}: label must be 0 (normal) or 1 (anomalous), got {self.label!r}")
        if self.label == 0 and self.mask_path is not None:
            raise DatasetError(f"normal image {self.image_path} has a mask {self.mask_path}; normal images have none")
        if self.label == 1 and self.split == "train":
            raise DatasetError(
                f"anomalous image {self.image_path} is in the train split; training uses normal images only"
            )

    @property
    def has_mask(self) -> bool:
        """Whether the ground truth of every pixel is known.

        True for a normal image (no anomalous pixel) and an anomalous image with its mask; False for an anomalous
        image without mask and for an image to predict.
        """
        return self.label == 0 or self.mask_path is not None


def is_image_file(path: Path) -> bool:
    """Whether ``path`` is a file with one of :data:`IMAGE_EXTENSIONS`."""
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def _report_ignored(directory: Path, ignored: list[Path], kind: str) -> None:
    """Log the entries of ``directory`` that are not ``kind`` and so are not read (hidden names excepted)."""
    visible = sorted(path.name for path in ignored if not path.name.startswith("."))
    if visible:
        log.warning("ignored %d entries of %s that are not %s: %s", len(visible), directory, kind, visible[:5])


def require_directory(directory: Path, what: str) -> Path:
    """Return ``directory`` if it is a directory.

    Args:
        directory: The directory that must exist.
        what: What the directory should hold, with its expected layout, for the error message.

    Returns:
        ``directory``.

    Raises:
        DatasetError: It does not exist or is not a directory.
    """
    if not directory.exists():
        raise DatasetError(f"directory {directory} does not exist; expected {what}")
    if not directory.is_dir():
        raise DatasetError(f"{directory} is not a directory; expected {what}")
    return directory


def list_images(directory: Path, what: str) -> list[Path]:
    """List the image files of a directory (not recursive), sorted by name.

    Other entries are logged at warning level, never read.

    Args:
        directory: The directory to list.
        what: What the directory should hold, with its expected layout, for the error message.

    Returns:
        The image files, at least one.

    Raises:
        DatasetError: The directory does not exist or holds no image file.
    """
    entries = sorted(require_directory(directory, what).iterdir())
    images = [path for path in entries if is_image_file(path)]
    _report_ignored(directory, [path for path in entries if path not in images], "image files")
    if not images:
        raise DatasetError(
            f"no images found in {directory}; expected {what} (image extensions: {', '.join(IMAGE_EXTENSIONS)})"
        )
    return images


def list_subdirectories(directory: Path, what: str) -> list[Path]:
    """List the subdirectories of a directory, sorted by name; other visible entries are logged.

    Args:
        directory: The directory to list.
        what: What the directory should hold, with its expected layout, for the error message.

    Returns:
        The subdirectories (possibly none); hidden ones (``.name``) are left out.

    Raises:
        DatasetError: The directory does not exist.
    """
    entries = sorted(require_directory(directory, what).iterdir())
    subdirectories = [path for path in entries if path.is_dir() and not path.name.startswith(".")]
    _report_ignored(directory, [path for path in entries if not path.is_dir()], "directories")
    return subdirectories


class MaskIndex:
    """The mask files of one directory, looked up by the stem of the image they belong to.

    A mask belongs to an image when its stem is the image's stem plus ``suffix`` (MVTec AD:
    ``000.png`` ↔ ``000_mask.png``; BTAD and converted VisA: same stem); its extension may be any of
    :data:`IMAGE_EXTENSIONS` (BTAD mixes ``.png`` and ``.bmp``).

    Args:
        directory: The mask directory; it may be missing, then every lookup fails with a clear error.
        suffix: What the mask's stem adds to the image's stem. Defaults to ``""``.
    """

    def __init__(self, directory: Path, suffix: str = "") -> None:
        self.directory = directory
        self.suffix = suffix
        self._by_stem: dict[str, list[Path]] = {}
        if directory.is_dir():
            for path in sorted(directory.iterdir()):
                if is_image_file(path):
                    self._by_stem.setdefault(path.stem, []).append(path)

    def mask_for(self, image_path: Path, missing_ok: bool = False) -> Path | None:
        """Return the mask of ``image_path``.

        Args:
            image_path: The anomalous image.
            missing_ok: Return ``None`` when no mask matches (the datamodule's ``allow_missing_masks``) instead of
                raising. Defaults to False.

        Raises:
            DatasetError: No mask (unless ``missing_ok``), or several masks with different extensions, match the
                image.
        """
        stem = image_path.stem + self.suffix
        matches = self._by_stem.get(stem, [])
        if not matches:
            if missing_ok:
                return None
            raise DatasetError(
                f"mask missing for defective image {image_path}: expected {self.directory / (stem + '.png')} "
                f"(or the same stem with another image extension); every defective image needs a ground-truth mask "
                f"({MISSING_MASKS_HINT})"
            )
        if len(matches) > 1:
            raise DatasetError(f"several masks match image {image_path}: {[str(p) for p in matches]}; keep one")
        return matches[0]


def seeded_subset(items: Sequence[T], fraction: float, seed: int, key: str, what: str) -> tuple[list[T], list[T]]:
    """Hold out a seeded random subset of ``items``.

    ``round(fraction * n)`` items are held out, and at least one when ``fraction > 0``; at least one
    item must remain. The choice depends only on ``seed``, ``key`` and the order of ``items``, so it is
    the same in every run and process (``key`` keeps subsets of different categories independent).

    Args:
        items: The items to split, in a deterministic order (sorted paths).
        fraction: The fraction to hold out, in ``[0, 1)``.
        seed: A non-negative seed.
        key: Distinguishes independent splits made with the same seed (e.g. ``"val/bottle"``).
        what: Names the items for the error message.

    Returns:
        ``(kept, held_out)``, each in the original order.

    Raises:
        DatasetError: Holding out at least one item would leave none.
    """
    count = 0 if fraction == 0 else max(1, round(fraction * len(items)))
    if count >= len(items) and count > 0:
        raise DatasetError(
            f"{what}: {len(items)} image(s) are too few to hold out a fraction of {fraction} and keep at least one; "
            f"add images or lower the fraction"
        )
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    held = set(rng.permutation(len(items))[:count].tolist())
    kept = [item for position, item in enumerate(items) if position not in held]
    held_out = [item for position, item in enumerate(items) if position in held]
    return kept, held_out


def prediction_samples(path: Path, categories: Sequence[str]) -> list[Sample]:
    """The unlabelled images to predict under ``path``, each with its category.

    ``path`` is an image file or a directory searched recursively for image files. An image's category is the
    name of its top-level directory below ``path`` when that is one of ``categories``
    (``<path>/<category>/**/*.png``); any other image (directly in ``path``, or under a directory that is not a
    category) belongs to the one selected category, or, when several are selected, to :data:`UNKNOWN_CATEGORY`:
    the model then predicts its category (a flat folder of mixed categories).

    Args:
        path: An image file or a directory of images (masks are not needed and not read).
        categories: The selected category names.

    Returns:
        The images sorted by path, split ``"predict"``, label :data:`UNLABELLED`.

    Raises:
        DatasetError: ``path`` does not exist or holds no image.
    """
    path = Path(path).expanduser()
    if path.is_file():
        if not is_image_file(path):
            raise DatasetError(f"{path} is not an image file; give an image ({', '.join(IMAGE_EXTENSIONS)}) or a "
                               "directory of images")
        images, root = [path], path.parent
    else:
        files = sorted(p for p in require_directory(path, "images to predict").rglob("*") if p.is_file())
        images, root = [p for p in files if is_image_file(p)], path
        _report_ignored(path, [p for p in files if p not in images and not p.name.startswith(".")], "image files")
        if not images:
            raise DatasetError(f"no images found under {path}; expected images to predict (image extensions: "
                               f"{', '.join(IMAGE_EXTENSIONS)}), directly or in <category>/ subdirectories")
    samples = []
    for image in images:
        top = image.relative_to(root).parts[0] if image.parent != root else None
        if top in categories:
            category = top
        else:
            category = categories[0] if len(categories) == 1 else UNKNOWN_CATEGORY
        samples.append(Sample(image, None, UNLABELLED, category, "unknown", "predict"))
    return samples
