import csv
import json
import math
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader, Dataset

from anomaly_diff.callbacks import Evaluator
from anomaly_diff.metrics import METRIC_NAMES, AnomalyMetrics
from anomaly_diff.models.base import AnomalyModule


class MeanImage(AnomalyModule):
    """Anomaly map = mean over colour channels; score = its maximum."""

    def __init__(self, categories):
        super().__init__(categories)
        self.weight = torch.nn.Parameter(torch.tensor(1.0))

    def compute_losses(self, batch):
        return {"loss": (self.weight - 1.0) ** 2}

    def predict_anomaly(self, batch):
        maps = batch["image"].mean(dim=1) * self.weight
        return {"anomaly_map": maps, "pred_score": maps.flatten(1).amax(1)}


class Samples(Dataset):
    """Random images; anomalous ones carry a brighter square that is also their mask; category "c" is normal only."""

    def __init__(self, categories=("a", "a", "a", "a", "b", "b", "b", "b", "c", "c"), size=8, seed=0):
        generator = torch.Generator().manual_seed(seed)
        self.categories = list(categories)
        self.labels = [i % 2 if c != "c" else 0 for i, c in enumerate(self.categories)]
        self.images = torch.rand(len(categories), 3, size, size, generator=generator) * 0.6
        self.masks = torch.zeros(len(categories), size, size)
        for i, label in enumerate(self.labels):
            if label:
                self.masks[i, 2:5, 3:6] = 1
                self.images[i, :, 2:5, 3:6] += 0.3 * torch.rand(3, 3, 3, generator=generator)

    def __len__(self):
        return len(self.categories)

    def __getitem__(self, i):
        return {
            "image": self.images[i],
            "mask": self.masks[i],
            "label": torch.tensor(self.labels[i]),
            "category": self.categories[i],
            "path": f"/data/{self.categories[i]}/test/{i:03d}.png",
            "index": torch.tensor(i),
        }


def trainer_for(tmp_path, evaluator, **kwargs):
    return Trainer(
        accelerator="cpu",
        devices=1,
        logger=CSVLogger(tmp_path, name="run"),
        callbacks=[evaluator],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def test_test_run_logs_and_writes_the_metrics(tmp_path, capsys):
    data = Samples()
    evaluator = Evaluator()
    trainer = trainer_for(tmp_path, evaluator)
    with pytest.warns(UserWarning, match=r"undefined.*c \(no anomalous test image"):
        trainer.test(MeanImage(["a", "b", "c"]), DataLoader(data, batch_size=3))
    results = evaluator.results
    # the values are those of the metric itself, which its own tests check against sklearn; spot-check one here
    a = [i for i, c in enumerate(data.categories) if c == "a"]
    maps = data.images[a].mean(1)
    expected_pixel_auroc = roc_auc_score(data.masks[a].flatten().numpy(), maps.flatten().numpy())
    assert results["per_category"]["a"]["pixel_AUROC"] == pytest.approx(expected_pixel_auroc, abs=1e-9)
    assert all(math.isnan(v) for v in results["per_category"]["c"].values())

    run_dir = tmp_path / "run" / "version_0"
    assert trainer.log_dir == str(run_dir)
    written = json.loads((run_dir / "metrics.json").read_text())
    assert written["per_category"]["c"]["pixel_AUPRO"] is None
    assert written["mean"] == results["mean"] and written["per_category"]["a"] == results["per_category"]["a"]
    rows = list(csv.DictReader((run_dir / "metrics_table.csv").open()))
    assert [r["category"] for r in rows] == ["a", "b", "c", "mean"]
    assert float(rows[3]["pixel_AUROC"]) == results["mean"]["pixel_AUROC"] and rows[2]["image_AUROC"] == "nan"
    markdown = (run_dir / "metrics.md").read_text()
    assert "| c | n/a |" in markdown and "left out of the mean" in markdown
    assert f"| **mean** | **{100 * results['mean']['image_AUROC']:.2f}** |" in markdown
    assert "pixel_AUPRO" in capsys.readouterr().out

    # every attached logger gets the values: the CSVLogger's own metrics.csv holds the mean and per-category keys
    logged = next(csv.DictReader((run_dir / "metrics.csv").open()))
    assert float(logged["test/pixel_AUPRO"]) == pytest.approx(results["mean"]["pixel_AUPRO"], abs=1e-6)
    assert float(logged["test/image_AUROC/b"]) == pytest.approx(results["per_category"]["b"]["image_AUROC"], abs=1e-6)
    expected_keys = {f"test/{m}" for m in METRIC_NAMES} | {f"test/{m}/{c}" for m in METRIC_NAMES for c in "abc"}
    assert expected_keys <= set(logged)


def test_validation_is_evaluated_only_when_asked(tmp_path):
    calls = []

    class Counting(MeanImage):
        def predict_anomaly(self, batch):
            calls.append(len(batch["label"]))
            return super().predict_anomaly(batch)

    train = DataLoader(Samples(), batch_size=5)
    val = DataLoader(Samples(categories=["a"] * 4 + ["b"] * 4, seed=1), batch_size=4)
    for evaluate in (False, True):
        calls.clear()
        evaluator = Evaluator(evaluate_validation=evaluate)
        trainer = trainer_for(tmp_path, evaluator, max_epochs=1, num_sanity_val_steps=1)
        trainer.fit(Counting(["a", "b", "c"]), train, val)
        if evaluate:
            assert calls == [4, 4]  # the two validation batches, not the sanity check
            assert set(evaluator.validation_results["per_category"]) == {"a", "b"}
            assert "val/pixel_AUROC/b" in trainer.callback_metrics
        else:
            assert calls == [] and evaluator.validation_results is None
            assert not any(k.startswith("val/pixel") for k in trainer.callback_metrics)


def direct_trainer():
    return SimpleNamespace(num_test_batches=[1], sanity_checking=False)


def batch_of(data, indices):
    items = [data[i] for i in indices]
    return {
        k: [x[k] for x in items] if isinstance(items[0][k], str) else torch.stack([x[k] for x in items])
        for k in items[0]
    }


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        ("nan_map", r"test image /data/a/test/001.png: sample 1 of the batch is invalid: its anomaly map has NaN"),
        ("inf_score", r"test image /data/a/test/001.png: sample 1 .* image score is not finite"),
        ("small_map", r"test image /data/a/test/000.png: .*map size \(4, 4\) differs from the mask size \(8, 8\)"),
    ],
)
def test_invalid_outputs_name_the_image(tmp_path, corrupt, message):
    data = Samples()
    batch = batch_of(data, [0, 1, 2])
    outputs = MeanImage(["a"]).predict_anomaly(batch)
    if corrupt == "nan_map":
        outputs["anomaly_map"][1, 0, 0] = math.nan
    elif corrupt == "inf_score":
        outputs["pred_score"][1] = math.inf
    else:
        outputs["anomaly_map"] = outputs["anomaly_map"][:, :4, :4]
    evaluator = Evaluator()
    with pytest.raises(ValueError, match=message):
        evaluator.on_test_batch_end(direct_trainer(), None, outputs, batch, 0)


def test_outputs_without_maps_say_what_is_expected(tmp_path):
    batch = batch_of(Samples(), [0])
    with pytest.raises(ValueError, match=r"must return a dict with 'anomaly_map' .* got \['pred_score'\]"):
        Evaluator().on_test_batch_end(direct_trainer(), None, {"pred_score": torch.zeros(1)}, batch, 0)


def test_binned_arguments_reach_the_metric(tmp_path):
    data = Samples()
    evaluator = Evaluator(num_bins=4, score_range=(0.0, 1.0))
    with pytest.warns(UserWarning):
        trainer_for(tmp_path, evaluator).test(MeanImage(["a", "b", "c"]), DataLoader(data, batch_size=4))
    maps = data.images.mean(1)
    binned = AnomalyMetrics(num_bins=4, score_range=(0.0, 1.0))
    binned.update(maps, data.masks, maps.flatten(1).amax(1), torch.tensor(data.labels), data.categories)
    exact = AnomalyMetrics()
    exact.update(maps, data.masks, maps.flatten(1).amax(1), torch.tensor(data.labels), data.categories)
    with pytest.warns(UserWarning):
        expected, unexpected = binned.compute(), exact.compute()
    assert json.dumps(evaluator.results) == json.dumps(expected) != json.dumps(unexpected)


class UnmaskedSamples(Samples):
    """Samples whose category "b" has no ground-truth masks: its anomalous images have an empty mask, has_mask False."""

    def __getitem__(self, i):
        item = super().__getitem__(i)
        unknown = self.categories[i] == "b" and self.labels[i] == 1
        return item | {"mask": item["mask"] * (not unknown), "has_mask": torch.tensor(not unknown)}


def test_a_category_without_masks_gets_image_metrics_and_pixel_metrics_marked_not_available(tmp_path):
    data = UnmaskedSamples(categories=["a"] * 6 + ["b"] * 6)
    evaluator = Evaluator()
    trainer = trainer_for(tmp_path, evaluator)
    with pytest.warns(UserWarning, match=r"pixel metrics are not available .* for b \(3 of its 3 anomalous"):
        trainer.test(MeanImage(["a", "b"]), DataLoader(data, batch_size=4))
    results = evaluator.results
    maps, labels = data.images.mean(1), torch.tensor(data.labels)
    a, b = torch.arange(6), torch.arange(6, 12)
    # independent values: sklearn on a's pixels and on each category's image scores (the maps' maxima)
    expected_pixel_auroc = roc_auc_score(data.masks[a].flatten().numpy(), maps[a].flatten().numpy())
    assert results["per_category"]["a"]["pixel_AUROC"] == pytest.approx(expected_pixel_auroc, abs=1e-9)
    for category, where in (("a", a), ("b", b)):
        expected = roc_auc_score(labels[where].numpy(), maps[where].flatten(1).amax(1).numpy())
        assert results["per_category"][category]["image_AUROC"] == pytest.approx(expected, abs=1e-9)
    assert results["mean"]["pixel_AUROC"] == results["per_category"]["a"]["pixel_AUROC"]
    assert results["mean"]["image_AUROC"] == pytest.approx(
        (results["per_category"]["a"]["image_AUROC"] + results["per_category"]["b"]["image_AUROC"]) / 2
    )

    run_dir = tmp_path / "run" / "version_0"
    written = json.loads((run_dir / "metrics.json").read_text())
    assert all(written["per_category"]["b"][m] is None for m in METRIC_NAMES if m.startswith("pixel"))
    assert written["not_available"]["b"]["reason"] == "3 of its 3 anomalous test images have no ground-truth mask"
    assert written["categories_in_mean"]["pixel_AUROC"] == 1 and written["categories_in_mean"]["image_AUROC"] == 2
    rows = {r["category"]: r for r in csv.DictReader((run_dir / "metrics_table.csv").read_text().splitlines())}
    assert rows["b"]["pixel_AUPRO"] == "n/a" and float(rows["b"]["image_AUROC"]) == results["per_category"]["b"][
        "image_AUROC"]
    markdown = (run_dir / "metrics.md").read_text()
    assert "| b | " in markdown and "| n/a | n/a | n/a | n/a |" in markdown
    assert "pixel metrics are not available for b" in markdown and "over 1 of 2 categories" in markdown
    # not-available values are not logged (a logger would show an unexplained NaN); the rest is
    logged = next(csv.DictReader((run_dir / "metrics.csv").open()))
    assert "test/pixel_AUROC/b" not in logged and "test/image_AUROC/b" in logged and "test/pixel_AUROC/a" in logged
    assert float(logged["test/pixel_AUROC"]) == pytest.approx(results["mean"]["pixel_AUROC"], abs=1e-6)


def test_without_any_mask_the_pixel_means_are_not_logged(tmp_path):
    data = UnmaskedSamples(categories=["b"] * 6)
    evaluator = Evaluator()
    trainer = trainer_for(tmp_path, evaluator)
    with pytest.warns(UserWarning, match="pixel metrics are not available"):
        trainer.test(MeanImage(["b"]), DataLoader(data, batch_size=6))
    assert evaluator.results["categories_in_mean"]["pixel_AUROC"] == 0
    assert math.isnan(evaluator.results["mean"]["pixel_AUROC"])
    assert "test/pixel_AUROC" not in trainer.callback_metrics and "test/image_AUROC" in trainer.callback_metrics
