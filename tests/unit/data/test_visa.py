import csv
from collections import Counter

import pytest

from anomaly_diff.data import VisA
from anomaly_diff.errors import DatasetError
from tests.helpers.data import write_split_csv, write_visa_converted, write_visa_raw


def _rows(path):
    with path.open(newline="") as file:
        return list(csv.reader(file))


def test_raw_layout_with_split_csv(tmp_path):
    root = write_visa_raw(tmp_path, objects=("pcb1", "candle"), n_train=5, n_good=2, n_defect=3)
    datamodule = VisA(str(root), split_csv="split_csv/1cls.csv", image_size=32, crop_size=32, val_fraction=0.2)
    assert datamodule.categories == ["candle", "pcb1"]
    assert datamodule.split_csv == root / "split_csv" / "1cls.csv"
    datamodule.setup()
    assert Counter(s.category for s in datamodule.train_dataset.samples) == {"candle": 4, "pcb1": 4}
    assert Counter(s.category for s in datamodule.val_dataset.samples) == {"candle": 1, "pcb1": 1}
    test = datamodule.test_dataset.samples
    assert Counter((s.category, s.label) for s in test) == {("candle", 0): 2, ("candle", 1): 3, ("pcb1", 0): 2,
                                                           ("pcb1", 1): 3}
    csv_rows = {(row[3], row[4]) for row in _rows(root / "split_csv" / "1cls.csv")[1:] if row[1] == "test"}
    assert {(str(s.image_path.relative_to(root)), str(s.mask_path.relative_to(root)) if s.mask_path else "")
            for s in test} == csv_rows
    assert {s.defect_type for s in test} == {"good", "bad"}


def test_raw_masks_with_class_ids_are_binarised(tmp_path):
    root = write_visa_raw(tmp_path, objects=("candle",), n_train=2, n_good=1, n_defect=3)
    datamodule = VisA(str(root), split_csv="split_csv/1cls.csv", image_size=32, crop_size=32, val_fraction=0)
    datamodule.setup("test")
    for position, sample in enumerate(datamodule.test_dataset.samples):
        mask = datamodule.test_dataset[position]["mask"]
        assert set(mask.unique().tolist()) == ({0.0, 1.0} if sample.label else {0.0})
        assert mask.sum() == (8 * 8 if sample.label else 0)  # the helper's square is size // 4 wide


def test_absolute_split_csv_path(tmp_path):
    root = write_visa_raw(tmp_path / "visa", objects=("candle",))
    moved = (root / "split_csv" / "1cls.csv").rename(tmp_path / "mine.csv")
    assert VisA(str(root), split_csv=str(moved)).split_csv == moved


def test_converted_layout_without_split_csv(tmp_path):
    root = write_visa_converted(tmp_path, objects=("pcb1", "candle"), n_train=4, n_good=2, n_defect=2)
    datamodule = VisA(str(root), image_size=32, crop_size=32, val_fraction=0.25)
    datamodule.setup()
    assert datamodule.categories == ["candle", "pcb1"]
    assert len(datamodule.train_dataset) == 6 and len(datamodule.val_dataset) == 2
    test = datamodule.test_dataset.samples
    assert Counter((s.defect_type, s.label) for s in test) == {("good", 0): 4, ("bad", 1): 4}
    assert all(s.image_path.suffix == ".JPG" for s in test)
    assert all(s.mask_path == s.image_path.parents[2] / "ground_truth" / "bad" / f"{s.image_path.stem}.png"
               for s in test if s.label)


def test_split_csv_with_wrong_columns_names_file_and_expected_header(tmp_path):
    root = write_visa_raw(tmp_path, objects=("candle",))
    rows = [("object", "set", "label", "image"), ("candle", "x", "y", "z")]
    path = write_split_csv(root / "split_csv" / "bad.csv", rows)
    message = rf"{path} is not a VisA split CSV: it lacks the columns \['split', 'mask'\] .*header object,split,label"
    with pytest.raises(DatasetError, match=message):
        VisA(str(root), split_csv="split_csv/bad.csv")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (("candle", "val", "normal", "x.JPG", ""), "split 'val' is unknown; expected 'train' or 'test'"),
        (("candle", "test", "bad", "x.JPG", ""), "label 'bad' is unknown; expected 'normal' or 'anomaly'"),
        (("candle", "test", "anomaly", "x.JPG", ""), "mask missing for defective image x.JPG"),
        (("candle", "train", "anomaly", "x.JPG", "m.png"), "an anomaly in the train split"),
        (("candle", "test", "normal", "x.JPG", "m.png"), "normal image x.JPG has a mask m.png"),
    ],
)
def test_bad_split_csv_rows_name_file_and_line(tmp_path, row, message):
    root = write_visa_raw(tmp_path, objects=("candle",))
    rows = _rows(root / "split_csv" / "1cls.csv") + [list(row)]
    write_split_csv(root / "split_csv" / "1cls.csv", rows)
    with pytest.raises(DatasetError, match=rf"1cls.csv line {len(rows)}: {message}"):
        VisA(str(root), split_csv="split_csv/1cls.csv")


def test_anomaly_rows_without_mask_are_accepted_when_allowed(tmp_path):
    root = write_visa_raw(tmp_path, objects=("candle",), n_defect=2)
    rows = _rows(root / "split_csv" / "1cls.csv")
    line = next(number for number, row in enumerate(rows, start=1) if row[2] == "anomaly")
    rows[line - 1][4] = ""
    write_split_csv(root / "split_csv" / "1cls.csv", rows)
    with pytest.raises(DatasetError, match=rf"line {line}: mask missing .*allow_missing_masks=true"):
        VisA(str(root), split_csv="split_csv/1cls.csv")
    datamodule = VisA(str(root), split_csv="split_csv/1cls.csv", allow_missing_masks=True, image_size=32, crop_size=32)
    with pytest.warns(UserWarning, match=r"1 anomalous test image\(s\) have no ground-truth mask.*candle \(1\)"):
        datamodule.setup("test")
    assert [s.has_mask for s in datamodule.test_dataset.samples if s.label] == [False, True]


def test_missing_files_listed_in_the_csv_are_named_with_their_line(tmp_path):
    root = write_visa_raw(tmp_path, objects=("candle",), n_defect=2)
    rows = _rows(root / "split_csv" / "1cls.csv")
    line = next(number for number, row in enumerate(rows, start=1) if row[2] == "anomaly")
    (root / rows[line - 1][4]).unlink()
    datamodule = VisA(str(root), split_csv="split_csv/1cls.csv")
    with pytest.raises(DatasetError, match=rf"line {line}: mask of defective image .*000.JPG, .*000.png does not"):
        datamodule.setup("fit")


def test_missing_split_csv_and_missing_root_are_named(tmp_path):
    with pytest.raises(DatasetError, match=rf"directory {tmp_path / 'none'} does not exist"):
        VisA(str(tmp_path / "none"), split_csv="split_csv/1cls.csv")
    with pytest.raises(DatasetError, match=rf"VisA split CSV {tmp_path / 'split_csv' / '1cls.csv'} does not exist"):
        VisA(str(tmp_path), split_csv="split_csv/1cls.csv")


def test_unknown_object_lists_the_objects_of_the_csv(tmp_path):
    root = write_visa_raw(tmp_path, objects=("candle", "pcb1"))
    with pytest.raises(DatasetError, match=r"unknown categories \['fryum'\] .*known categories: \['candle', 'pcb1'\]"):
        VisA(str(root), split_csv="split_csv/1cls.csv", categories=["fryum"])
