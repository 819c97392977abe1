import pytest
import torch

from anomaly_diff.models.base import AnomalyModule


class ConstantLoss(AnomalyModule):
    """A model whose loss is whatever the test puts in `value`."""

    def __init__(self, categories, value=1.0):
        super().__init__(categories)
        self.weight = torch.nn.Parameter(torch.tensor(1.0))
        self.value = value

    def compute_losses(self, batch):
        return {"loss": self.weight * self.value, "term": torch.tensor(self.value)}

    def predict_anomaly(self, batch):
        maps = batch["image"].mean(dim=1)
        return {"anomaly_map": maps, "pred_score": maps.flatten(1).amax(1)}


def test_class_indices_follow_the_model_order_not_the_batch_order():
    model = ConstantLoss(["bottle", "cable", "zipper"])
    assert model.class_indices(["zipper", "bottle", "zipper"]).tolist() == [2, 0, 2]
    assert model.num_classes == 3


def test_unknown_category_is_named():
    model = ConstantLoss(["bottle", "cable"])
    with pytest.raises(KeyError, match=r"unknown categories \['screw'\].*bottle"):
        model.class_indices(["bottle", "screw"])


@pytest.mark.parametrize("categories", [None, []])
def test_missing_categories_say_how_to_set_them(categories):
    with pytest.raises(ValueError, match="model.init_args.categories"):
        ConstantLoss(categories)


def test_duplicate_categories_are_rejected():
    with pytest.raises(ValueError, match="duplicate"):
        ConstantLoss(["a", "a"])


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_loss_names_the_term_and_step(value):
    model = ConstantLoss(["a"], value=value)
    batch = {"image": torch.rand(2, 3, 4, 4), "label": torch.zeros(2)}
    with pytest.raises(FloatingPointError, match=r"non-finite training loss term 'loss' .* global step 0"):
        model.training_step(batch, 0)


def test_predict_step_carries_path_and_category():
    model = ConstantLoss(["a"])
    batch = {"image": torch.rand(2, 3, 4, 4), "path": ["x.png", "y.png"], "category": ["a", "a"]}
    out = model.predict_step(batch, 0)
    assert out["path"] == ["x.png", "y.png"] and out["category"] == ["a", "a"]
    torch.testing.assert_close(out["anomaly_map"], batch["image"].mean(dim=1))


def test_calibration_travels_in_checkpoints_and_old_checkpoints_load_uncalibrated(tmp_path):
    model = ConstantLoss(["a", "b"])
    assert model.score_thresholds.isnan().all() and model.map_ranges.shape == (2, 2)
    model.score_thresholds[:] = torch.tensor([0.25, 0.5])
    checkpoint = {"state_dict": dict(model.state_dict())}
    restored = ConstantLoss(["a", "b"])
    restored.on_load_checkpoint(checkpoint)
    restored.load_state_dict(checkpoint["state_dict"])
    assert restored.score_thresholds.tolist() == [0.25, 0.5]
    old = {"state_dict": {k: v for k, v in model.state_dict().items() if k not in ("score_thresholds", "map_ranges")}}
    restored.on_load_checkpoint(old)
    restored.load_state_dict(old["state_dict"])  # strict: the hook filled the missing buffers
    assert restored.score_thresholds.isnan().all() and restored.map_ranges.isnan().all()
