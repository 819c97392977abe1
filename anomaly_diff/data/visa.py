"""VisA, the Visual Anomaly data set (Zou et al., "SPot-the-Difference", ECCV 2022).

Two layouts are read:

- **raw** (as downloaded) with its official split CSV, e.g. ``split_csv/1cls.csv``::

      object,split,label,image,mask
      candle,train,normal,candle/Data/Images/Normal/0836.JPG,
      candle,test,anomaly,candle/Data/Images/Anomaly/000.JPG,candle/Data/Masks/Anomaly/000.png

  ``image`` and ``mask`` are relative to the data set root; ``label`` is ``normal`` or ``anomaly``.
- **converted** to MVTec AD style by the official ``prepare_data.py`` (used when no CSV is given)::

      <root>/<object>/train/good/*.JPG, test/good/*.JPG, test/bad/*.JPG, ground_truth/bad/<stem>.png
"""

import csv
from pathlib import Path
from typing import NamedTuple

from anomaly_diff.data.datamodule import AnomalyDataModule
from anomaly_diff.data.mvtec_ad import find_category_directories, make_mvtec_style_samples
from anomaly_diff.data.samples import MISSING_MASKS_HINT, Sample, require_directory
from anomaly_diff.errors import DatasetError

SPLIT_CSV_COLUMNS = ("object", "split", "label", "image", "mask")
_LABELS = {"normal": 0, "anomaly": 1}


class SplitRow(NamedTuple):
    """One checked row of a VisA split CSV (``line`` is its line number in the file, for messages)."""

    line: int
    object: str
    split: str
    label: str
    image: str
    mask: str


def read_split_csv(csv_path: Path, allow_missing_masks: bool = False) -> list[SplitRow]:
    """Read and check a VisA split CSV.

    Args:
        csv_path: The CSV file (header ``object,split,label,image,mask``).
        allow_missing_masks: Accept anomaly rows with an empty ``mask``. Defaults to False.

    Returns:
        Its rows, in file order.

    Raises:
        DatasetError: The file is missing, lacks a column, or a row has an unknown split or label, an
            anomaly without mask (unless ``allow_missing_masks``), or a normal image with one.
    """
    if not csv_path.is_file():
        raise DatasetError(
            f"VisA split CSV {csv_path} does not exist; give `split_csv` (relative to `root` or absolute)"
        )
    with csv_path.open(newline="") as file:
        reader = csv.DictReader(file)
        missing = [column for column in SPLIT_CSV_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(
                f"{csv_path} is not a VisA split CSV: it lacks the columns {missing} (its header is "
                f"{reader.fieldnames}); expected the header {','.join(SPLIT_CSV_COLUMNS)}"
            )
        rows = [
            SplitRow(reader.line_num, *(record[column].strip() for column in SPLIT_CSV_COLUMNS)) for record in reader
        ]
    for row in rows:
        where = f"{csv_path} line {row.line}"
        if row.split not in ("train", "test"):
            raise DatasetError(f"{where}: split {row.split!r} is unknown; expected 'train' or 'test'")
        if row.label not in _LABELS:
            raise DatasetError(f"{where}: label {row.label!r} is unknown; expected 'normal' or 'anomaly'")
        if row.label == "anomaly" and row.split == "train":
            raise DatasetError(
                f"{where}: an anomaly in the train split; training uses normal images only (use the 1cls split)"
            )
        if row.label == "anomaly" and not row.mask and not allow_missing_masks:
            raise DatasetError(
                f"{where}: mask missing for defective image {row.image}; every anomaly needs a mask "
                f"({MISSING_MASKS_HINT})"
            )
        if row.label == "normal" and row.mask:
            raise DatasetError(f"{where}: normal image {row.image} has a mask {row.mask}; normal rows leave it empty")
    return rows


class VisA(AnomalyDataModule):
    """VisA (12 objects), all objects in one multi-class data module, raw layout + split CSV or converted.

    Args:
        root: The data set root: the raw download (``candle/Data/...``) when ``split_csv`` is given,
            else the MVTec-style converted layout (``candle/train/good/...``).
        split_csv: The official split CSV; a relative path is resolved against ``root`` (the download
            keeps it at ``split_csv/1cls.csv``). ``None`` reads the converted layout. Defaults to None.
        allow_missing_masks: See :class:`~anomaly_diff.data.datamodule.AnomalyDataModule`; with ``split_csv`` an
            anomaly row with an empty ``mask`` is then accepted. Defaults to False.
        **kwargs: The other arguments of :class:`~anomaly_diff.data.datamodule.AnomalyDataModule`.
    """

    def __init__(
        self,
        root: str,
        split_csv: str | None = None,
        allow_missing_masks: bool = False,
        **kwargs,
    ) -> None:
        if split_csv is not None:
            require_directory(Path(root).expanduser(), "the VisA download (<root>/<object>/Data/Images/...)")
        self.split_csv = None if split_csv is None else Path(root).expanduser() / Path(split_csv).expanduser()
        self._rows = None if self.split_csv is None else read_split_csv(self.split_csv, allow_missing_masks)
        super().__init__(root, allow_missing_masks=allow_missing_masks, **kwargs)

    def _find_categories(self) -> list[str]:
        if self._rows is None:
            return find_category_directories(self.root, "converted VisA: <root>/<object>/train/good/*.JPG")
        return sorted({row.object for row in self._rows})

    def _make_samples(self, category: str) -> list[Sample]:
        if self._rows is None:
            return make_mvtec_style_samples(
                self.root / category, category, normal_name="good", mask_suffix="",
                allow_missing_masks=self.allow_missing_masks,
            )
        samples = []
        for row in self._rows:
            if row.object != category:
                continue
            image_path = self._existing(self.root / row.image, row, "image file")
            mask_path = None
            if row.mask:
                mask_path = self._existing(self.root / row.mask, row, f"mask of defective image {image_path},")
            defect_type = "good" if row.label == "normal" else "bad"
            samples.append(Sample(image_path, mask_path, _LABELS[row.label], category, defect_type, row.split))
        if not any(sample.split == "train" for sample in samples):
            raise DatasetError(
                f"no training images found for category {category!r}: {self.split_csv} has no train rows for it"
            )
        return samples

    def _existing(self, path: Path, row: SplitRow, what: str) -> Path:
        """Return ``path`` if the file exists, else name the CSV row that lists it."""
        if not path.is_file():
            raise DatasetError(
                f"{self.split_csv} line {row.line}: {what} {path} does not exist; `root` must be the VisA "
                "download directory the CSV's paths are relative to"
            )
        return path
