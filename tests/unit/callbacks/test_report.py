import re

import numpy as np
import pytest
import torch

from anomaly_diff.callbacks import report as report_module
from anomaly_diff.callbacks.report import RunReport
from tests.helpers.trainers import bare_trainer
from tests.unit.callbacks.test_calibration import ScoreModel


def fake_batches(scores, labels, categories, batch_size=3):
    n = len(scores)
    for start in range(0, n, batch_size):
        part = slice(start, min(n, start + batch_size))
        size = part.stop - part.start
        yield {
            "image": torch.rand(size, 3, 4, 4),
            "mask": torch.zeros(size, 4, 4),
            "label": torch.tensor(labels[part]),
            "category": categories[part],
            "path": [f"/d/{categories[i]}/{'bad' if labels[i] else 'good'}/{i:03d}.png"
                     for i in range(part.start, part.stop)],
            "index": torch.arange(part.start, part.stop),
        }, {"anomaly_map": torch.rand(size, 4, 4), "pred_score": torch.tensor(scores[part])}


def listed(report_text, category, title):
    section = report_text.split(f"### {category}")[1].split("### ")[0]
    block = section.split(f"**{title}")[1].split("**")[1] if f"**{title}" in section else ""
    return re.findall(r"`(/d/[^`]+)`", block)


def brute_force(scores, labels, categories, category, label, highest, k):
    picked = [i for i in range(len(scores)) if categories[i] == category and labels[i] == label]
    # Ties go to the earlier image.
    picked.sort(key=lambda i: (-scores[i] if highest else scores[i], i))
    return [f"/d/{category}/{'bad' if label else 'good'}/{i:03d}.png" for i in picked[:k]]


@pytest.mark.parametrize("ranks", [1, 2])
def test_examples_are_the_extremes_of_each_category_with_ties_to_the_earlier_image(tmp_path, monkeypatch, ranks):
    rng = np.random.default_rng(0)
    n = 40
    scores = rng.integers(0, 6, n).astype(float).tolist()  # many ties
    labels = rng.integers(0, 2, n).tolist()
    categories = [["a", "b"][i] for i in rng.integers(0, 2, n)]
    reporters = [RunReport(examples=3) for _ in range(ranks)]
    trainer = bare_trainer(tmp_path)
    model = ScoreModel(["a", "b"])
    model.score_thresholds[:] = torch.tensor([2.5, 3.5])
    for reporter in reporters:
        reporter.on_test_epoch_start(trainer, model)
    for number, (batch, outputs) in enumerate(fake_batches(scores, labels, categories)):
        reporters[number % ranks].on_test_batch_end(trainer, model, outputs, batch, number)  # DDP-like sharding
    if ranks == 2:
        other_rank = (reporters[1]._scores, dict(reporters[1]._kept))
        monkeypatch.setattr(report_module, "gather_objects", lambda trainer, mine: [mine, other_rank])
    reporters[0].on_test_epoch_end(trainer, model)
    reporters[0].on_test_end(trainer, model)
    text = (tmp_path / "report.md").read_text()
    for category in ("a", "b"):
        assert listed(text, category, "Clearest") == brute_force(scores, labels, categories, category, 1, True, 3)
        assert listed(text, category, "Weakest") == brute_force(scores, labels, categories, category, 1, False, 3)
        assert listed(text, category, "Closest") == brute_force(scores, labels, categories, category, 0, True, 3)
        threshold = {"a": 2.5, "b": 3.5}[category]
        counts = [(sum(s > threshold for s, y, c in zip(scores, labels, categories, strict=True)
                       if c == category and y == label),
                   sum(y == label and c == category for y, c in zip(labels, categories, strict=True)))
                  for label in (0, 1)]
        assert f"| {category} | {threshold:g} | {counts[0][0]}/{counts[0][1]} " in text
        assert f"| {counts[1][0]}/{counts[1][1]} " in text
    assert f"Test images: {n} ({sum(labels)} anomalous) in 2 categories" in text
    assert len(list((tmp_path / "report").rglob("*.png"))) == 2 * 3 * 3


def test_uncalibrated_categories_show_no_decisions(tmp_path):
    trainer = bare_trainer(tmp_path)
    trainer.ckpt_path = "x.ckpt"
    reporter, model = RunReport(examples=0), ScoreModel(["a"])
    reporter.on_test_epoch_start(trainer, model)
    batch, outputs = next(fake_batches([1.0, 2.0], [0, 1], ["a", "a"]))
    reporter.on_test_batch_end(trainer, model, outputs, batch, 0)
    reporter.on_test_epoch_end(trainer, model)
    reporter.on_test_end(trainer, model)
    text = (tmp_path / "report.md").read_text()
    assert "| a | n/a | n/a | n/a |" in text and "## Examples" not in text and "checkpoint: `x.ckpt`" in text


def test_negative_example_count_is_named():
    with pytest.raises(ValueError, match="report.examples must be >= 0, got -1"):
        RunReport(examples=-1)
