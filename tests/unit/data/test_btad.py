from collections import Counter

from anomaly_diff.data import BTAD
from tests.helpers.data import write_btad


def test_btad_records_labels_and_png_or_bmp_masks(tmp_path):
    root = write_btad(tmp_path, products=("03", "01"), n_train=5, n_good=2, n_defect=3)
    datamodule = BTAD(str(root), image_size=32, crop_size=32, val_fraction=0.2)
    assert datamodule.categories == ["01", "03"]
    datamodule.setup()
    assert Counter(s.category for s in datamodule.train_dataset.samples) == {"01": 4, "03": 4}
    test = datamodule.test_dataset.samples
    assert Counter((s.category, s.defect_type, s.label) for s in test) == {
        ("01", "good", 0): 2, ("01", "ko", 1): 3, ("03", "good", 0): 2, ("03", "ko", 1): 3
    }
    # write_btad gives the first product written ("03") .png masks and the second ("01") .bmp masks.
    suffixes = {(s.category, s.mask_path.suffix) for s in test if s.label}
    assert suffixes == {("03", ".png"), ("01", ".bmp")}
    assert all(s.mask_path.stem == s.image_path.stem and s.mask_path.parent.name == "ko" for s in test if s.label)
    position = max(i for i, s in enumerate(test) if s.label == 1)
    item = datamodule.test_dataset[position]
    assert item["label"] == 1 and item["mask"].sum() > 0 and item["category"] == "03"
