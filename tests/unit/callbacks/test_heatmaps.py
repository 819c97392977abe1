import cv2
import numpy as np
import pytest
import torch

from anomaly_diff.callbacks.heatmaps import HeatmapWriter
from tests.helpers.trainers import bare_trainer


def fake_batch(categories, labels, size=8):
    n = len(categories)
    return {
        "image": torch.rand(n, 3, size, size),
        "mask": torch.zeros(n, size, size),
        "label": torch.tensor(labels),
        "category": categories,
        "path": [f"/data/{c}/test/{'crack' if y else 'good'}/{i:03d}.png" for i, (c, y) in
                 enumerate(zip(categories, labels, strict=True))],
        "index": torch.arange(n),
    }


def test_writer_keeps_per_category_and_defect_type_and_writes_pngs(tmp_path):
    writer = HeatmapWriter(per_category=1)
    trainer = bare_trainer(tmp_path)
    writer.on_test_epoch_start(trainer, None)
    batch = fake_batch(["a", "a", "a", "b"], [0, 1, 1, 0])
    outputs = {"anomaly_map": torch.rand(4, 8, 8), "pred_score": torch.rand(4)}
    writer.on_test_batch_end(trainer, None, outputs, batch, 0)
    writer.on_test_epoch_end(trainer, None)
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png"))
    assert written == ["heatmaps/a/crack_001.png", "heatmaps/a/good_000.png", "heatmaps/b/good_003.png"]
    picture = cv2.imread(str(tmp_path / "heatmaps/a/good_000.png"))
    assert picture.shape == (8, 24, 3)


def test_negative_count_is_rejected():
    with pytest.raises(ValueError, match="per_category"):
        HeatmapWriter(per_category=-1)


def test_kept_samples_do_not_hold_their_batch(tmp_path):
    # A view of batch[...][i] keeps the whole batch alive: one batch per kept sample (hundreds of MB on big sets).
    writer = HeatmapWriter(per_category=1)
    trainer = bare_trainer(tmp_path)
    writer.on_test_epoch_start(trainer, None)
    batch = fake_batch(["a", "a"], [0, 0], size=16)
    outputs = {"anomaly_map": torch.rand(2, 16, 16), "pred_score": torch.rand(2)}
    writer.on_test_batch_end(trainer, None, outputs, batch, 0)
    (_, image, anomaly_map, mask), = writer._samples[("a", "good")].values()
    for kept, source in ((image, batch["image"]), (anomaly_map, outputs["anomaly_map"]), (mask, batch["mask"])):
        assert not np.shares_memory(kept, source.numpy())
        assert kept.base is None or kept.base.nbytes == kept.nbytes


def test_an_image_without_ground_truth_is_drawn_without_a_mask_outline(tmp_path):
    writer = HeatmapWriter(per_category=2)
    trainer = bare_trainer(tmp_path)
    writer.on_test_epoch_start(trainer, None)
    batch = fake_batch(["a", "a"], [1, 1]) | {"has_mask": torch.tensor([True, False])}
    writer.on_test_batch_end(trainer, None, {"anomaly_map": torch.rand(2, 8, 8), "pred_score": torch.rand(2)}, batch, 0)
    writer.on_test_epoch_end(trainer, None)
    assert cv2.imread(str(tmp_path / "heatmaps/a/crack_000.png")).shape == (8, 24, 3)
    assert cv2.imread(str(tmp_path / "heatmaps/a/crack_001.png")).shape == (8, 16, 3)  # image | map: no empty outline
