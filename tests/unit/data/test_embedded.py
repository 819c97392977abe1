import json
from collections import Counter
from pathlib import Path

import pytest
import yaml

from anomaly_diff.data import Embedded
from anomaly_diff.data.synthetic import EMBEDDED_CATEGORIES, MANIFEST_NAME
from anomaly_diff.errors import DatasetError

SMALL = {"generated_size": 32, "num_train": 5, "num_test_good": 2, "num_test_defective": 4}


def test_categories_are_known_before_the_data_exists(tmp_path):
    datamodule = Embedded(root=str(tmp_path / "embedded"))
    assert datamodule.categories == sorted(EMBEDDED_CATEGORIES)
    assert datamodule.num_classes == len(EMBEDDED_CATEGORIES)
    assert not (tmp_path / "embedded").exists()  # nothing is written before prepare_data


def test_unknown_category_lists_the_embedded_ones(tmp_path):
    with pytest.raises(DatasetError, match=r"unknown categories \['tile'\] for Embedded .*known categories: \['brick'"):
        Embedded(root=str(tmp_path), categories=["tile"])


def test_prepare_data_generates_then_reads_the_mvtec_layout(tmp_path):
    root = tmp_path / "embedded"
    datamodule = Embedded(
        root=str(root), categories=["grass", "brick"], image_size=32, crop_size=32, val_fraction=0.2, **SMALL
    )
    datamodule.prepare_data()
    assert sorted(path.name for path in root.iterdir() if path.is_dir()) == sorted(EMBEDDED_CATEGORIES)
    datamodule.setup()
    assert datamodule.categories == ["brick", "grass"]
    assert Counter(s.category for s in datamodule.train_dataset.samples) == {"brick": 4, "grass": 4}
    assert Counter(s.category for s in datamodule.val_dataset.samples) == {"brick": 1, "grass": 1}
    test = datamodule.test_dataset.samples
    assert Counter((s.category, s.label) for s in test) == {("brick", 0): 2, ("brick", 1): 4, ("grass", 0): 2,
                                                           ("grass", 1): 4}
    batch = next(iter(datamodule.test_dataloader()))
    anomalous = batch["label"] == 1
    assert (batch["mask"][anomalous].sum(dim=(1, 2)) > 0).all() and batch["mask"][~anomalous].sum() == 0


def test_prepare_data_is_idempotent(tmp_path):
    root = tmp_path / "embedded"
    datamodule = Embedded(root=str(root), categories=["coins"], **SMALL)
    datamodule.prepare_data()
    image = root / "coins" / "train" / "good" / "000.png"
    stamp = image.stat().st_mtime_ns
    datamodule.prepare_data()
    assert image.stat().st_mtime_ns == stamp


def test_difficulty_reaches_the_generator(tmp_path):
    root = tmp_path / "embedded"
    assert Embedded(root=str(root)).difficulty == "realistic"
    datamodule = Embedded(root=str(root), categories=["grass"], difficulty="hard", **SMALL)
    datamodule.prepare_data()
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    assert manifest["parameters"]["difficulty"] == "hard"
    assert sorted(p.name for p in (root / "grass" / "test").iterdir()) == ["deformation", "good", "patch",
                                                                           "scratch", "stain"]
    with pytest.raises(ValueError, match=r"difficulty must be one of \('hard', 'realistic'\), got 'easy'"):
        Embedded(root=str(root), difficulty="easy").prepare_data()


@pytest.mark.parametrize("config", ["configs/data/embedded.yaml", "configs/drdc/embedded_data.yaml"])
def test_configs_name_the_realistic_difficulty(config):
    init_args = yaml.safe_load((Path(__file__).parents[3] / config).read_text())["init_args"]
    assert init_args["difficulty"] == "realistic"
    hparams = Embedded(**init_args).hparams  # writes nothing before prepare_data
    assert {key: hparams[key] for key in init_args} == init_args
