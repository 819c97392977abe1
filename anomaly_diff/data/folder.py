"""A generic format: a directory of normal images, optionally one of anomalous images and one of masks.

Layout (names are free; paths are relative to ``root`` unless absolute)::

    <root>/<normal_dir>/*.png
    <root>/<abnormal_dir>/*.png            (optional)
    <root>/<mask_dir>/<image stem><mask_suffix>.png   (required with abnormal_dir)

Without ``abnormal_dir`` every normal image is a training image and there is no test split. With it,
a seeded ``test_fraction`` of the normal images is moved to the test split (so image-level metrics
have normal images to compare against), and the anomalous images join them there.
"""

from pathlib import Path

from anomaly_diff.data.datamodule import AnomalyDataModule
from anomaly_diff.data.errors import DatasetError
from anomaly_diff.data.samples import MaskIndex, Sample, list_images, require_directory, seeded_subset


class Folder(AnomalyDataModule):
    """One category read from plain directories of images.

    Args:
        root: The directory the other directories are relative to.
        normal_dir: The normal images (required, non-empty).
        abnormal_dir: The anomalous images; ``None`` gives a training-only data set. Defaults to None.
        mask_dir: The masks of the anomalous images, matched by file stem; required with
            ``abnormal_dir``. Defaults to None.
        mask_suffix: What a mask's stem adds to its image's stem (``"_mask"`` for MVTec-style names).
            Defaults to ``""``.
        category: The name of the one category. Defaults to ``"folder"``.
        test_fraction: With ``abnormal_dir``, the fraction of normal images moved to the test split, in
            ``[0, 1)``, chosen with ``seed``. Defaults to 0.2.
        image_size: See :class:`~anomaly_diff.data.datamodule.AnomalyDataModule`.
        crop_size: See :class:`~anomaly_diff.data.datamodule.AnomalyDataModule`.
        batch_size: See :class:`~anomaly_diff.data.datamodule.AnomalyDataModule`.
        eval_batch_size: See :class:`~anomaly_diff.data.datamodule.AnomalyDataModule`.
        num_workers: See :class:`~anomaly_diff.data.datamodule.AnomalyDataModule`.
        val_fraction: See :class:`~anomaly_diff.data.datamodule.AnomalyDataModule`.
        seed: Seed of the test and validation splits. Defaults to 0.
        path: See :class:`~anomaly_diff.data.datamodule.AnomalyDataModule`.

    Raises:
        DatasetError: A directory is missing, ``abnormal_dir`` comes without ``mask_dir``, or
            ``test_fraction`` is out of range.
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
        image_size: int = 288,
        crop_size: int = 256,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        seed: int = 0,
        path: str | None = None,
    ) -> None:
        if abnormal_dir is not None and mask_dir is None:
            raise DatasetError(
                f"abnormal_dir={abnormal_dir!r} is given without mask_dir: every anomalous image needs a mask "
                "(pixel metrics are computed against it); give `mask_dir`"
            )
        if not 0 <= test_fraction < 1:
            raise DatasetError(f"test_fraction={test_fraction} is out of range; it must be in [0, 1)")
        if not category:
            raise DatasetError("category is empty; give the category a name")
        base = require_directory(Path(root).expanduser(), "the Folder root the image directories are relative to")
        self.normal_dir = base / normal_dir
        self.abnormal_dir = None if abnormal_dir is None else base / abnormal_dir
        self.mask_dir = None if mask_dir is None else base / mask_dir
        self.mask_suffix = mask_suffix
        self.category = category
        self.test_fraction = test_fraction
        super().__init__(
            root, None, image_size, crop_size, batch_size, eval_batch_size, num_workers, val_fraction, seed,
            path=path,
        )

    def _find_categories(self) -> list[str]:
        return [self.category]

    def _make_samples(self, category: str) -> list[Sample]:
        normals = list_images(self.normal_dir, f"the normal images of category {category!r} (`normal_dir`)")
        if self.abnormal_dir is None:
            return [Sample(path, None, 0, category, "good", "train") for path in normals]
        train, test_normals = seeded_subset(
            normals, self.test_fraction, self.seed, f"test/{category}", f"normal images in {self.normal_dir}"
        )
        masks = MaskIndex(require_directory(self.mask_dir, "the masks of the anomalous images"), self.mask_suffix)
        anomalous = list_images(self.abnormal_dir, f"the anomalous images of category {category!r} (`abnormal_dir`)")
        return (
            [Sample(path, None, 0, category, "good", "train") for path in train]
            + [Sample(path, None, 0, category, "good", "test") for path in test_normals]
            + [Sample(path, masks.mask_for(path), 1, category, self.abnormal_dir.name, "test") for path in anomalous]
        )
