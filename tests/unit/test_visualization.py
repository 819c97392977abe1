import os

import cv2
import numpy as np
import pytest
import torch

from anomaly_diff.visualization import overlay_panel, sample_arrays, shared_colour_range, write_png


def test_panel_shows_image_heat_and_mask_outline():
    image = np.full((8, 8, 3), 0.5)
    anomaly_map = np.zeros((8, 8))
    anomaly_map[2:4, 2:4] = 1.0
    mask = np.zeros((8, 8))
    mask[4:7, 4:7] = 1
    panel = overlay_panel(image, anomaly_map, mask, vmin=0.0, vmax=1.0)
    assert panel.shape == (8, 24, 3) and panel.dtype == np.uint8
    np.testing.assert_array_equal(panel[:, :8], 127)
    hot, cold = panel[3, 8 + 3], panel[0, 8]
    assert hot[0] > hot[2] and cold[2] > cold[0]  # jet: red where the map is high, blue where low
    outline = panel[:, 16:]
    assert tuple(outline[4, 4]) == (255, 0, 0) and tuple(outline[5, 5]) == (127, 127, 127)
    without_mask = overlay_panel(image, anomaly_map, None, vmin=0.0, vmax=1.0)  # predict: no ground truth
    np.testing.assert_array_equal(without_mask, panel[:, :16])


def test_sample_arrays_are_copies_and_leave_out_a_mask_that_is_not_ground_truth():
    batch = {"image": torch.rand(2, 3, 4, 4), "mask": torch.ones(2, 4, 4), "has_mask": torch.tensor([True, False])}
    maps = torch.rand(2, 4, 4)
    image, anomaly_map, mask = sample_arrays(batch, maps, 0)
    np.testing.assert_array_equal(image, batch["image"][0].permute(1, 2, 0).numpy())
    np.testing.assert_array_equal(anomaly_map, maps[0].numpy())
    for kept, source in ((image, batch["image"]), (anomaly_map, maps), (mask, batch["mask"])):
        assert not np.shares_memory(kept, source.numpy())
    assert sample_arrays(batch, maps, 1)[2] is None


def test_one_colour_range_spans_the_smallest_value_and_the_999th_permille():
    maps = [np.linspace(0, 1, 1001).reshape(7, 143), np.full((7, 143), -1.0)]
    low, high = shared_colour_range(maps)
    assert low == -1.0 and high == pytest.approx(np.quantile(np.concatenate([m.ravel() for m in maps]), 0.999))


def test_a_png_is_written_whole_without_forcing_it_to_disk(tmp_path, monkeypatch):
    # One fsync per overlay made large predict runs wait on the disk (experiments/results/bench_overlay_writes.md).
    synced = []
    monkeypatch.setattr(os, "fsync", synced.append)
    panel = np.zeros((4, 8, 3), dtype=np.uint8)
    panel[..., 0] = 255  # red
    target = tmp_path / "predictions" / "a" / "000000_x.png"
    write_png(target, panel, "x.png")
    assert synced == []
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temporary left
    np.testing.assert_array_equal(cv2.imread(str(target))[..., ::-1], panel)
