"""The multi-class LightningDataModule every data format derives from.

A format subclass writes two methods: ``_find_categories`` (the categories present under ``root``)
and ``_make_samples`` (the sample table of one category). Everything else is shared: category
selection and class indices, the seeded validation split, the transform, and the data loaders.
"""

import logging
from abc import ABC, abstractmethod
from collections import Counter
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from anomaly_diff.data.dataset import AnomalyDataset, build_transform
from anomaly_diff.data.samples import MISSING_MASKS_HINT, Sample, prediction_samples, seeded_subset
from anomaly_diff.errors import DatasetError

log = logging.getLogger(__name__)


class AnomalyDataModule(LightningDataModule, ABC):
    """Train/val/test/predict loaders over all selected categories of one data set.

    - train: the training normals of every category, less the validation split; shuffled.
    - val: a seeded ``val_fraction`` of each category's training normals (stratified per category,
      the same in every run for a given ``seed``, disjoint from train).
    - test: every test image (normal and anomalous) of every category.
    - predict: the images under ``path`` when it is given (no masks, no labels; see
      :func:`~anomaly_diff.data.samples.prediction_samples` for how their categories are told), else the test images.

    Class indices are positions in the sorted list of selected categories; every sample carries its
    category name too, so a model maps names onto its own indices.

    Args:
        root: The data set's root directory.
        categories: The categories to use; ``None`` uses every category found under ``root``.
            Defaults to None.
        image_size: Side of the square images are resized to (with ``keep_aspect``, the length of their shorter
            side). Defaults to 288 (DeCo-Diff).
        crop_size: Side of the central crop taken after resizing. Defaults to 256 (DeCo-Diff).
        batch_size: Training batch size. Defaults to 16.
        eval_batch_size: Batch size of validation, test and predict; ``None`` uses ``batch_size``.
            Defaults to None.
        num_workers: Data-loading worker processes (persistent when above 0). Defaults to 0.
        val_fraction: Fraction of each category's training normals held out for validation, in
            ``[0, 1)``; at least one image per category when above 0. Defaults to 0.1.
        seed: Seed of the validation split (and of any other split a format makes). Defaults to 0.
        path: An image or a directory of images that ``predict`` scores instead of the test split
            (``<path>/<category>/...`` or, with one selected category, any layout). With ``path`` and explicit
            ``categories``, the categories are not looked up under ``root`` (MVTec AD, BTAD, converted VisA and
            the embedded set then need no data at ``root``: a trained model predicts where its data set is absent).
            Defaults to None.
        allow_missing_masks: Accept anomalous test images without a ground-truth mask (a warning names their
            categories once): such a sample has ``has_mask`` False, and a category with any of them gets image
            metrics only, its pixel metrics reported as not available (``anomaly_diff.metrics.AnomalyMetrics``).
            Defaults to False: a missing mask is an error, as in a broken download of a benchmark.
        keep_aspect: Resize keeping the aspect ratio (the shorter side to ``image_size``) instead of stretching
            images to a square; the centre crop then shows their undistorted middle. Defaults to False (the
            reference's square resize).

    Raises:
        DatasetError: ``root`` or a category is missing, or an argument is out of range.
    """

    def __init__(
        self,
        root: str,
        categories: list[str] | None = None,
        image_size: int = 288,
        crop_size: int = 256,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        seed: int = 0,
        path: str | None = None,
        allow_missing_masks: bool = False,
        keep_aspect: bool = False,
    ) -> None:
        super().__init__()
        # Record the concrete class's arguments in checkpoints (Lightning collects them from every __init__ up to
        # the subclass's, whose own values win), so the record rebuilds the subclass; a subclass passes the base's
        # arguments on as keywords and fixes none of them. They are not sent to the loggers (the CLI logs the whole
        # config): Lightning refuses to merge them with the model's, whose `categories` (the model's classes, from
        # its checkpoint) may differ from the data's (a test subset).
        self.save_hyperparameters(logger=False)
        _check_int("image_size", image_size, minimum=1)
        _check_int("crop_size", crop_size, minimum=1)
        if crop_size > image_size:
            raise DatasetError(f"crop_size={crop_size} is larger than image_size={image_size}; it must be at most that")
        _check_int("batch_size", batch_size, minimum=1)
        if eval_batch_size is not None:
            _check_int("eval_batch_size", eval_batch_size, minimum=1)
        _check_int("num_workers", num_workers, minimum=0)
        _check_int("seed", seed, minimum=0)
        if not 0 <= val_fraction < 1:
            raise DatasetError(f"val_fraction={val_fraction} is out of range; it must be in [0, 1)")
        self.root = Path(root).expanduser()
        self.image_size = image_size
        self.crop_size = crop_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.seed = seed
        self.path = None if path is None else Path(path).expanduser()
        self.allow_missing_masks = bool(allow_missing_masks)
        self.keep_aspect = bool(keep_aspect)
        self._categories = self._select_categories(categories)
        self.train_dataset: AnomalyDataset | None = None
        self.val_dataset: AnomalyDataset | None = None
        self.test_dataset: AnomalyDataset | None = None
        self.predict_dataset: AnomalyDataset | None = None

    @abstractmethod
    def _find_categories(self) -> list[str]:
        """Return the categories present in the data set (called once, from ``__init__``).

        Raises:
            DatasetError: ``root`` does not exist or is not in the format's layout.
        """

    @abstractmethod
    def _make_samples(self, category: str) -> list[Sample]:
        """Return the sample table of one category: its training normals and its test images.

        Raises:
            DatasetError: The layout is broken (e.g. no training images, a defective image without mask).
        """

    @property
    def categories(self) -> list[str]:
        """The selected category names, sorted."""
        return list(self._categories)

    @property
    def num_classes(self) -> int:
        """The number of selected categories."""
        return len(self._categories)

    def _select_categories(self, requested: list[str] | None) -> list[str]:
        if requested is not None and (isinstance(requested, str) or not requested):
            raise DatasetError(f"categories={requested!r}: give a non-empty list of category names, or null")
        duplicates = sorted({category for category in requested or () if list(requested).count(category) > 1})
        if duplicates:
            raise DatasetError(f"categories lists {duplicates} more than once")
        if requested is not None and self.path is not None:
            return sorted(requested)  # predicting on `path`: the model checks the names, the data set may be absent
        found = sorted(self._find_categories())
        name = type(self).__name__
        if not found:
            raise DatasetError(f"{name} found no categories in {self.root}; check `root` and the data set's layout")
        if requested is None:
            return found
        unknown = [category for category in requested if category not in found]
        if unknown:
            raise DatasetError(f"unknown categories {unknown} for {name} at {self.root}; known categories: {found}")
        return sorted(requested)

    def setup(self, stage: str | None = None) -> None:
        """Index the selected categories once and build the train, val and test datasets.

        With ``path``, ``predict`` reads only the images under it.

        Args:
            stage: ``"fit"``, ``"validate"``, ``"test"``, ``"predict"`` or ``None`` (all).

        Raises:
            DatasetError: A category's layout is broken, a mask's size differs from its image's, a
                category has too few training normals for the validation split, ``stage`` needs test
                images that a category lacks, or ``path`` holds no image or one of unknown category.
        """
        if stage == "predict" and self.path is not None:
            if self.predict_dataset is None:
                samples = prediction_samples(self.path, self._categories)
                transform = build_transform(self.image_size, self.crop_size, self.keep_aspect)
                self.predict_dataset = AnomalyDataset(samples, self._categories, transform)
                log.info("predicting %d images under %s", len(samples), self.path)
            return
        if self.train_dataset is None:
            self._build_datasets()
        if stage in ("test", "predict", None):
            present = {sample.category for sample in self.test_dataset.samples}
            missing = [category for category in self._categories if category not in present]
            if missing:
                raise DatasetError(
                    f"no test images found for categories {missing} of {type(self).__name__} at {self.root}; "
                    f"`{getattr(stage, 'value', stage) or 'test'}` needs each selected category's test split; select "
                    "only categories with test images (data.init_args.categories)"
                )

    def _build_datasets(self) -> None:
        train, val, test = [], [], []
        for category in self._categories:
            samples = self._make_samples(category)
            normals = [sample for sample in samples if sample.split == "train"]
            if not normals:
                raise DatasetError(f"no training images found for category {category!r} of {type(self).__name__}")
            kept, held_out = seeded_subset(
                normals, self.val_fraction, self.seed, f"val/{category}", f"training normals of category {category!r}"
            )
            train += kept
            val += held_out
            test += [sample for sample in samples if sample.split == "test"]
        self._check_masks(test)
        transform = build_transform(self.image_size, self.crop_size, self.keep_aspect)
        self.train_dataset = AnomalyDataset(train, self._categories, transform)
        self.val_dataset = AnomalyDataset(val, self._categories, transform)
        self.test_dataset = AnomalyDataset(test, self._categories, transform)
        self.test_dataset.check_mask_sizes()  # fail before training, not after it
        log.info(
            "%s at %s: %d categories, %d train / %d val / %d test images (%d anomalous)",
            type(self).__name__,
            self.root,
            self.num_classes,
            len(train),
            len(val),
            len(test),
            sum(sample.label for sample in test),
        )

    def _check_masks(self, test: list[Sample]) -> None:
        """Refuse anomalous test images without mask unless ``allow_missing_masks``; then warn once about them.

        Every format's samples pass here, so a format that leaves a mask out (by mistake or because it was told
        to) cannot make pixel metrics count an all-zero mask as "no defect pixel".
        """
        unmasked = [sample for sample in test if sample.label == 1 and not sample.has_mask]
        if not unmasked:
            return
        by_category = Counter(sample.category for sample in unmasked)
        counts = ", ".join(f"{category} ({count})" for category, count in sorted(by_category.items()))
        if not self.allow_missing_masks:
            raise DatasetError(
                f"{len(unmasked)} anomalous test image(s) of {type(self).__name__} at {self.root} have no ground-truth "
                f"mask, e.g. {unmasked[0].image_path}; per category: {counts}; {MISSING_MASKS_HINT}"
            )
        rank_zero_warn(
            f"{type(self).__name__}: {len(unmasked)} anomalous test image(s) have no ground-truth mask (allowed: "
            f"allow_missing_masks), per category: {counts}; these categories get image metrics only, their pixel "
            "metrics are reported as not available",
            category=UserWarning,
        )

    def _loader(self, dataset: AnomalyDataset | None, batch_size: int, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before its data loaders are requested")
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled batches of training normals."""
        return self._loader(self.train_dataset, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        """Batches of the held-out training normals; an empty list (no validation) when ``val_fraction=0``."""
        if self.val_dataset is not None and len(self.val_dataset) == 0:
            return []
        return self._loader(self.val_dataset, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Batches of every test image, in a fixed order."""
        return self._loader(self.test_dataset, self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """Batches of the images under ``path`` when given, else of the test images; in a fixed order."""
        dataset = self.test_dataset if self.path is None else self.predict_dataset
        return self._loader(dataset, self.eval_batch_size, shuffle=False)


def _check_int(key: str, value: int, minimum: int) -> None:
    """Raise unless ``value`` is at least ``minimum`` (its type is the CLI's to check, from the annotation)."""
    if value < minimum:
        raise DatasetError(f"{key}={value!r} is invalid; it must be an integer >= {minimum}")
