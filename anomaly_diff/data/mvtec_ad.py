"""MVTec AD and the layouts that copy it (BTAD, converted VisA, the embedded data set).

Layout (Bergmann et al., "MVTec AD", CVPR 2019)::

    <root>/<category>/train/good/000.png
    <root>/<category>/test/good/000.png
    <root>/<category>/test/<defect>/000.png
    <root>/<category>/ground_truth/<defect>/000_mask.png
"""

from pathlib import Path

from anomaly_diff.data.datamodule import AnomalyDataModule
from anomaly_diff.data.samples import MaskIndex, Sample, list_images, list_subdirectories, require_directory
from anomaly_diff.errors import DatasetError


def find_category_directories(root: Path, layout: str) -> list[str]:
    """Return the names of the (non-hidden) subdirectories of ``root``: one per category.

    Args:
        root: The data set's root directory.
        layout: A one-line description of the expected layout, for the error message.

    Raises:
        DatasetError: ``root`` does not exist or is not a directory.
    """
    return [path.name for path in list_subdirectories(root, f"the data set root ({layout})")]


def make_mvtec_style_samples(
    category_dir: Path,
    category: str,
    normal_name: str = "good",
    mask_suffix: str = "_mask",
    allow_missing_masks: bool = False,
) -> list[Sample]:
    """Index one category of an MVTec-AD-style layout.

    Training images come from ``train/<normal_name>`` (required, non-empty). Every subdirectory of
    ``test/`` is read: ``test/<normal_name>`` holds normal images, any other ``test/<defect>`` anomalous
    ones, each with a mask ``ground_truth/<defect>/<image stem><mask_suffix>.<ext>``. A category
    without ``test/`` has no test images (fit still works; test refuses).

    Args:
        category_dir: ``<root>/<category>``.
        category: The category name.
        normal_name: Directory name of the normal images. Defaults to ``"good"`` (BTAD: ``"ok"``).
        mask_suffix: What a mask's stem adds to its image's stem. Defaults to ``"_mask"`` (BTAD and
            converted VisA: ``""``).
        allow_missing_masks: A defective image without mask (or a defect without ``ground_truth`` directory) gets
            ``mask_path=None`` instead of an error. Defaults to False.

    Returns:
        The training normals, then the test images by defect directory, each sorted by file name.

    Raises:
        DatasetError: ``train/<normal_name>`` or a test directory is missing or empty, or a defective
            image has no mask (unless ``allow_missing_masks``).
    """
    layout = f"<category>/train/{normal_name}/*.png"
    train_dir = category_dir / "train" / normal_name
    samples = [
        Sample(path, None, 0, category, "good", "train")
        for path in list_images(train_dir, f"the training images of category {category!r} ({layout})")
    ]
    train_subdirs = list_subdirectories(category_dir / "train", f"the training directory of category {category!r}")
    if len(train_subdirs) > 1:
        others = [path.name for path in train_subdirs if path.name != normal_name]
        raise DatasetError(
            f"{category_dir / 'train'} holds {others} besides {normal_name!r}; training uses normal images only, "
            "so move those directories out"
        )
    test_dir = category_dir / "test"
    if not test_dir.exists():
        return samples
    what = f"the test images of category {category!r} (<category>/test/<{normal_name} or defect>/*.png)"
    for defect_dir in list_subdirectories(require_directory(test_dir, what), what):
        images = list_images(defect_dir, what)
        if defect_dir.name == normal_name:
            samples += [Sample(path, None, 0, category, "good", "test") for path in images]
            continue
        masks = MaskIndex(category_dir / "ground_truth" / defect_dir.name, mask_suffix)
        samples += [
            Sample(path, masks.mask_for(path, allow_missing_masks), 1, category, defect_dir.name, "test")
            for path in images
        ]
    return samples


class MVTecAD(AnomalyDataModule):
    """MVTec AD (15 categories), all categories in one multi-class data module.

    The arguments are those of :class:`~anomaly_diff.data.datamodule.AnomalyDataModule`; ``root`` is the
    directory holding the category directories (``bottle/``, ``cable/``, ...).
    """

    def _find_categories(self) -> list[str]:
        return find_category_directories(self.root, "MVTec AD: <root>/<category>/train/good/*.png")

    def _make_samples(self, category: str) -> list[Sample]:
        return make_mvtec_style_samples(self.root / category, category, allow_missing_masks=self.allow_missing_masks)
