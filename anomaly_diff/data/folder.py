"""A generic format: per category, a directory of normal images, optionally one of anomalous images and one of masks.

Two layouts (names are free; paths are relative to ``root`` unless absolute):

- one category, named by ``category``, when ``<root>/<normal_dir>`` is a directory::

      <root>/<normal_dir>/*.png
      <root>/<abnormal_dir>/*.png                        (optional)
      <root>/<mask_dir>/<image stem><mask_suffix>.png    (optional)

- several categories, one subdirectory of ``root`` each, otherwise: every subdirectory holding ``<normal_dir>`` is
  a category in the layout above (``categories`` selects some of them, as for the other formats)::

      <root>/<category>/<normal_dir>/*.png
      <root>/<category>/<abnormal_dir>/*.png             (optional)
      <root>/<category>/<mask_dir>/<image stem><mask_suffix>.png

Without ``abnormal_dir`` every normal image is a training image and there is no test split. With it,
a seeded ``test_fraction`` of the normal images is moved to the test split (so image-level metrics
have normal images to compare against), and the anomalous images join them there.
Without ``mask_dir`` anomalous images have no masks (README, "Data without masks"); with it every one needs its mask,
unless ``allow_missing_masks``.
"""

from pathlib import Path

from anomaly_diff.data.datamodule import AnomalyDataModule
from anomaly_diff.data.samples import (
    MaskIndex,
    Sample,
    list_images,
    list_subdirectories,
    require_directory,
    seeded_subset,
)
from anomaly_diff.errors import DatasetError


class Folder(AnomalyDataModule):
    """One or several categories read from plain directories of images.

    Args:
        root: The directory the other directories are relative to (one category), or holding one subdirectory per
            category that the other directories are relative to (several categories; used when
            ``<root>/<normal_dir>`` is not a directory).
        normal_dir: The normal images (required, non-empty).
        abnormal_dir: The anomalous images; ``None`` gives a training-only data set. Defaults to None.
        mask_dir: The masks of the anomalous images, matched by file stem; ``None``: the anomalous images have no
            masks (pixel metrics not available). Defaults to None.
        mask_suffix: What a mask's stem adds to its image's stem (``"_mask"`` for MVTec-style names).
            Defaults to ``""``.
        category: The name of the one category of the single-category layout (unused with one subdirectory per
            category, whose names are the categories). Defaults to ``"folder"``.
        test_fraction: With ``abnormal_dir``, the fraction of normal images moved to the test split, in
            ``[0, 1)``, chosen with ``seed``. Defaults to 0.2.
        allow_missing_masks: With ``mask_dir``, accept anomalous images whose mask (or whose category's mask
            directory) is missing; see :class:`~anomaly_diff.data.datamodule.AnomalyDataModule`. Implied when
            ``mask_dir`` is None. Defaults to False.
        **kwargs: The other arguments of :class:`~anomaly_diff.data.datamodule.AnomalyDataModule`; its ``seed``
            chooses the test split too.

    Raises:
        DatasetError: A directory is missing, or ``test_fraction`` is out of range.
    """

    def __init__(
        self,
        root: str,
        normal_dir: str,
        abnormal_dir: str | None = None,
        mask_dir: str | None = None,
        mask_suffix: str = "",
        category: str = "folder",
        test_fraction: float = 0.2,
        allow_missing_masks: bool = False,
        **kwargs,
    ) -> None:
        if not 0 <= test_fraction < 1:
            raise DatasetError(f"test_fraction={test_fraction} is out of range; it must be in [0, 1)")
        if not category:
            raise DatasetError("category is empty; give the category a name")
        self.base = require_directory(
            Path(root).expanduser(),
            "the Folder root the image directories are relative to (or one subdirectory per category holding them)",
        )
        self.normal_name = normal_dir
        self.abnormal_name = abnormal_dir
        self.mask_name = mask_dir
        self.mask_suffix = mask_suffix
        self.category = category
        self.test_fraction = test_fraction
        self._category_dirs = self._find_category_dirs()
        super().__init__(root, allow_missing_masks=allow_missing_masks or mask_dir is None, **kwargs)

    def _find_category_dirs(self) -> dict[str, Path]:
        """Category name → the directory its ``normal_dir``, ``abnormal_dir`` and ``mask_dir`` are relative to."""
        if not (self.base / self.normal_name).is_dir():
            what = f"one subdirectory per category, each with {self.normal_name!r} (the Folder's `normal_dir`)"
            subdirectories = list_subdirectories(self.base, what)
            found = {path.name: path for path in subdirectories if (path / self.normal_name).is_dir()}
            if found:
                return found
        # the single-category layout; a missing normal_dir is reported when it is listed
        return {self.category: self.base}

    def _find_categories(self) -> list[str]:
        return list(self._category_dirs)

    def _make_samples(self, category: str) -> list[Sample]:
        base = self._category_dirs[category]
        normal_dir = base / self.normal_name
        normals = list_images(normal_dir, f"the normal images of category {category!r} (`normal_dir`)")
        if self.abnormal_name is None:
            return [Sample(path, None, 0, category, "good", "train") for path in normals]
        abnormal_dir = base / self.abnormal_name
        train, test_normals = seeded_subset(
            normals, self.test_fraction, self.seed, f"test/{category}", f"normal images in {normal_dir}"
        )
        anomalous = list_images(abnormal_dir, f"the anomalous images of category {category!r} (`abnormal_dir`)")
        if self.mask_name is None:
            masks = [None] * len(anomalous)
        else:
            mask_dir = base / self.mask_name
            if not self.allow_missing_masks:
                require_directory(mask_dir, f"the masks of the anomalous images of category {category!r} (`mask_dir`)")
            index = MaskIndex(mask_dir, self.mask_suffix)
            masks = [index.mask_for(path, missing_ok=self.allow_missing_masks) for path in anomalous]
        return (
            [Sample(path, None, 0, category, "good", "train") for path in train]
            + [Sample(path, None, 0, category, "good", "test") for path in test_normals]
            + [
                Sample(path, mask, 1, category, abnormal_dir.name, "test")
                for path, mask in zip(anomalous, masks, strict=True)
            ]
        )
