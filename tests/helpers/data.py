"""Writers of tiny data sets in the exact on-disk layouts of MVTec AD, VisA (raw + split CSV, and converted),
BTAD and the generic folder format, plus helpers that break files on purpose.

Images are seeded random noise (so two images are never identical); every defective image has a bright
square at a random place and its mask marks exactly that square (255 inside, 0 outside, or a VisA-style
class id for raw VisA masks), so the alignment of images and masks can be checked after transforms.
"""

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image


def _noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """A ``(size, size, 3)`` uint8 image of dark noise (values below 128, so the defect square stands out)."""
    return rng.integers(0, 128, size=(size, size, 3), dtype=np.uint8)


def _defective(rng: np.random.Generator, size: int, mask_value: int = 255) -> tuple[np.ndarray, np.ndarray]:
    """A noise image with a white square and its ``(size, size)`` uint8 mask (``mask_value`` in the square)."""
    image = _noise(rng, size)
    side = max(2, size // 4)
    top, left = (int(v) for v in rng.integers(0, size - side + 1, size=2))
    image[top : top + side, left : left + side] = 255
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[top : top + side, left : left + side] = mask_value
    return image, mask


def write_image(path: Path, array: np.ndarray) -> Path:
    """Save an array as an image (format from the suffix), creating parent directories; return ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else None)
    return path


def write_mvtec_style(
    root: Path,
    categories: Sequence[str] = ("a", "b"),
    n_train: int = 4,
    n_good: int = 2,
    n_defect: int = 2,
    size: int = 32,
    defect_types: Sequence[str] = ("crack", "scratch"),
    normal_name: str = "good",
    mask_suffix: str = "_mask",
    image_ext: str = ".png",
    mask_ext: str = ".png",
    seed: int = 0,
) -> Path:
    """Write ``<root>/<category>/{train/<normal>, test/<normal>, test/<defect>, ground_truth/<defect>}``.

    Args:
        root: Directory to write into (created).
        categories: Category directory names.
        n_train: Training normals per category.
        n_good: Normal test images per category.
        n_defect: Defective test images per category and defect type.
        size: Side of the square images.
        defect_types: Names of the defect directories.
        normal_name: Name of the normal-image directories (``good``; BTAD ``ok``).
        mask_suffix: Added to the image stem to name its mask (``_mask``; BTAD and converted VisA ``""``).
        image_ext: Image file extension.
        mask_ext: Mask file extension.
        seed: Seed of the pixel values and square positions.

    Returns:
        ``root``.
    """
    rng = np.random.default_rng(seed)
    for category in categories:
        base = root / category
        for index in range(n_train):
            write_image(base / "train" / normal_name / f"{index:03d}{image_ext}", _noise(rng, size))
        for index in range(n_good):
            write_image(base / "test" / normal_name / f"{index:03d}{image_ext}", _noise(rng, size))
        for defect in defect_types:
            for index in range(n_defect):
                image, mask = _defective(rng, size)
                write_image(base / "test" / defect / f"{index:03d}{image_ext}", image)
                write_image(base / "ground_truth" / defect / f"{index:03d}{mask_suffix}{mask_ext}", mask)
    return root


def write_mvtec_ad(
    root: Path,
    categories: Sequence[str] = ("a", "b"),
    n_train: int = 4,
    n_good: int = 2,
    n_defect: int = 2,
    size: int = 32,
    seed: int = 0,
) -> Path:
    """Write MVTec AD's layout: ``train/good``, ``test/{good,crack,scratch}``, ``ground_truth/<defect>/*_mask.png``.

    ``n_defect`` images are written per defect type (two types), so a category has ``2 * n_defect`` anomalies.
    """
    return write_mvtec_style(root, categories, n_train, n_good, n_defect, size, seed=seed)


def write_btad(
    root: Path,
    products: Sequence[str] = ("01", "02"),
    n_train: int = 4,
    n_good: int = 2,
    n_defect: int = 2,
    size: int = 32,
    seed: int = 0,
) -> Path:
    """Write BTAD's layout: ``<product>/{train/ok, test/ok, test/ko, ground_truth/ko}``.

    Images are ``.bmp``; masks of even-numbered products (in order) are ``.png``, of odd ones ``.bmp``,
    named like their image.
    """
    for position, product in enumerate(products):
        write_mvtec_style(
            root,
            [product],
            n_train,
            n_good,
            n_defect,
            size,
            defect_types=("ko",),
            normal_name="ok",
            mask_suffix="",
            image_ext=".bmp",
            mask_ext=".png" if position % 2 == 0 else ".bmp",
            seed=seed + position,
        )
    return root


def write_visa_converted(
    root: Path,
    objects: Sequence[str] = ("candle", "pcb1"),
    n_train: int = 4,
    n_good: int = 2,
    n_defect: int = 2,
    size: int = 32,
    seed: int = 0,
) -> Path:
    """Write VisA as converted by its official ``prepare_data.py``: ``test/bad`` and ``ground_truth/bad/<stem>.png``.

    Images are ``.JPG`` as in VisA.
    """
    return write_mvtec_style(
        root, objects, n_train, n_good, n_defect, size, ("bad",), mask_suffix="", image_ext=".JPG", seed=seed
    )


def write_visa_raw(
    root: Path,
    objects: Sequence[str] = ("candle", "pcb1"),
    n_train: int = 4,
    n_good: int = 2,
    n_defect: int = 2,
    size: int = 32,
    seed: int = 0,
) -> Path:
    """Write VisA as downloaded, with its split CSV at ``<root>/split_csv/1cls.csv``.

    ``<object>/Data/Images/Normal/NNNN.JPG``, ``<object>/Data/Images/Anomaly/NNN.JPG`` and
    ``<object>/Data/Masks/Anomaly/NNN.png``; masks hold a class id (1, 2, ...) instead of 255, as VisA's do.
    CSV rows: ``object,split,label,image,mask`` with ``normal``/``anomaly`` labels and root-relative paths.
    """
    rng = np.random.default_rng(seed)
    rows = [("object", "split", "label", "image", "mask")]
    for obj in objects:
        for index in range(n_train + n_good):
            relative = f"{obj}/Data/Images/Normal/{index:04d}.JPG"
            write_image(root / relative, _noise(rng, size))
            rows.append((obj, "train" if index < n_train else "test", "normal", relative, ""))
        for index in range(n_defect):
            image, mask = _defective(rng, size, mask_value=1 + index % 3)
            image_relative = f"{obj}/Data/Images/Anomaly/{index:03d}.JPG"
            mask_relative = f"{obj}/Data/Masks/Anomaly/{index:03d}.png"
            write_image(root / image_relative, image)
            write_image(root / mask_relative, mask)
            rows.append((obj, "test", "anomaly", image_relative, mask_relative))
    write_split_csv(root / "split_csv" / "1cls.csv", rows)
    return root


def write_split_csv(path: Path, rows: Sequence[Sequence[str]]) -> Path:
    """Write CSV rows (the first is the header) to ``path``; return ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as file:
        csv.writer(file).writerows(rows)
    return path


def write_folder(
    root: Path,
    n_normal: int = 10,
    n_abnormal: int = 3,
    size: int = 32,
    mask_suffix: str = "",
    seed: int = 0,
    masks: bool = True,
) -> Path:
    """Write the generic folder format: ``<root>/normal``, ``<root>/abnormal``, ``<root>/masks`` (by stem).

    ``n_abnormal=0`` writes only ``normal/``; ``masks=False`` writes no ``masks/`` (anomalous images without masks).
    """
    rng = np.random.default_rng(seed)
    for index in range(n_normal):
        write_image(root / "normal" / f"n{index:03d}.png", _noise(rng, size))
    for index in range(n_abnormal):
        image, mask = _defective(rng, size)
        write_image(root / "abnormal" / f"d{index:03d}.png", image)
        if masks:
            write_image(root / "masks" / f"d{index:03d}{mask_suffix}.png", mask)
    return root


def corrupt_file(path: Path) -> Path:
    """Overwrite ``path`` with bytes that are no image; return ``path``."""
    path.write_bytes(b"this is not an image\n" * 8)
    return path


def truncate_file(path: Path, keep: float = 0.5) -> Path:
    """Cut ``path`` to the first ``keep`` fraction of its bytes (a truncated download); return ``path``."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path
