import inspect

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from torch.utils.data import DataLoader

from anomaly_diff.callbacks import Evaluator, NormalCalibration
from anomaly_diff.data import MVTecAD
from anomaly_diff.data.samples import UNKNOWN_CATEGORY
from anomaly_diff.errors import NotFittedError
from anomaly_diff.models.base import CALIBRATION_BUFFERS, AnomalyModule
from anomaly_diff.models.components.category_classifier import CategoryClassifier
from tests.helpers.data import write_mvtec_ad
from tests.helpers.trainers import bare_trainer
from tests.unit.callbacks.test_evaluation import Samples
from tests.unit.models.components.test_category_classifier import PICTURES, batches, crops


class ConstantLoss(AnomalyModule):
    """A model whose loss is whatever the test puts in `value`."""

    def __init__(self, categories, value=1.0, category_source="given"):
        super().__init__(categories, category_source=category_source)
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


def test_test_and_predict_steps_return_the_prediction():
    model = ConstantLoss(["a"])
    batch = {"image": torch.rand(2, 3, 4, 4), "path": ["x.png", "y.png"], "category": ["a", "a"]}
    for out in (model.test_step(batch, 0), model.predict_step(batch, 0)):
        assert out.keys() == {"anomaly_map", "pred_score"}
        torch.testing.assert_close(out["anomaly_map"], batch["image"].mean(dim=1))


class NoisyModel(ConstantLoss):
    """Training and prediction both draw from the global random stream, as the diffusion models do."""

    def __init__(self, categories):
        super().__init__(categories)
        self.predicted = []

    def compute_losses(self, batch):
        return {"loss": (self.weight - torch.rand(())) ** 2}

    def predict_anomaly(self, batch):
        self.predicted.append(batch["index"].tolist())
        maps = batch["image"].mean(dim=1) + 0.01 * torch.rand(batch["image"].shape[0], *batch["image"].shape[2:])
        return {"anomaly_map": maps, "pred_score": maps.flatten(1).amax(1)}


def fit_noisy(tmp_path, callbacks) -> NoisyModel:
    """Two epochs of NoisyModel on shuffled batches, validated after each (two batches), from seed 0."""
    seed_everything(0)
    model = NoisyModel(["a", "b", "c"])
    trainer = Trainer(accelerator="cpu", devices=1, max_epochs=2, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=1,
                      default_root_dir=tmp_path, callbacks=callbacks)
    trainer.fit(model, DataLoader(Samples(), batch_size=3, shuffle=True),
                DataLoader(Samples(categories=["a"] * 4 + ["b"] * 4, seed=1), batch_size=4))
    return model


def test_validation_is_predicted_once_per_batch_for_every_callback_that_needs_it(tmp_path):
    evaluator, calibration = Evaluator(evaluate_validation=True), NormalCalibration()
    model = fit_noisy(tmp_path, [evaluator, calibration])
    assert model.predicted == [[0, 1, 2, 3], [4, 5, 6, 7]] * 2  # two validations (not the sanity check)
    assert set(evaluator.validation_results["per_category"]) == {"a", "b"}
    assert model.score_thresholds[:2].isfinite().all()


def test_evaluating_validation_leaves_the_training_unchanged(tmp_path):
    quiet = fit_noisy(tmp_path, [Evaluator(evaluate_validation=False)])
    evaluated = fit_noisy(tmp_path, [Evaluator(evaluate_validation=True), NormalCalibration()])
    assert quiet.predicted == [] and evaluated.predicted
    weights = [{k: v for k, v in model.state_dict().items() if k not in CALIBRATION_BUFFERS}
               for model in (quiet, evaluated)]
    torch.testing.assert_close(weights[1], weights[0], rtol=0, atol=0, equal_nan=True)  # bit for bit


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


# --- category prediction (images without a category, and category_source)

def fitted_model(category_source="given"):
    """A ConstantLoss over PICTURES whose category classifier is fitted on 6 crops of each picture."""
    model = ConstantLoss(list(PICTURES), category_source=category_source)
    model.category_classifier.fit(batches(seed=0), model.class_indices)
    return model


def labelled(names, seed=1):
    """A batch of crops of the pictures ``names`` (one crop each), labelled with those names."""
    images = torch.cat([crops(name, 1, seed + i) for i, name in enumerate(names)])
    return {"image": images, "category": list(names), "path": [f"{i}.png" for i in range(len(names))]}


def test_unknown_categories_are_predicted_and_given_ones_kept(monkeypatch):
    model = fitted_model()
    batch = labelled(["coffee", "chelsea", "astronaut"])
    batch["category"] = ["chelsea", UNKNOWN_CATEGORY, UNKNOWN_CATEGORY]  # a wrong given label is kept
    calls = []
    classify = model.category_classifier.forward
    monkeypatch.setattr(model.category_classifier, "forward", lambda images: calls.append(len(images)) or
                        classify(images))
    assert model.batch_categories(batch) == ["chelsea", "chelsea", "astronaut"]
    assert model.category_sources(batch) == ["given", "predicted", "predicted"]
    assert model.batch_categories(batch) == ["chelsea", "chelsea", "astronaut"]  # the same batch: answer kept
    assert calls == [2]


def test_category_source_predicted_ignores_the_given_labels():
    batch = labelled(["coffee", "chelsea", "astronaut"])
    batch["category"] = ["astronaut", "coffee", "chelsea"]  # all wrong
    model = fitted_model("predicted")
    assert model.batch_categories(batch) == ["coffee", "chelsea", "astronaut"]
    assert model.category_sources(batch) == ["predicted"] * 3
    model.category_source = "given"
    assert model.batch_categories(batch) == ["astronaut", "coffee", "chelsea"]
    with pytest.raises(ValueError, match=r"model.category_source must be one of \['given', 'predicted'\], got 'true'"):
        ConstantLoss(["a"], category_source="true")


def test_class_means_travel_in_checkpoints_without_the_backbone_and_old_checkpoints_load_unfitted():
    model = fitted_model()
    state = model.state_dict()
    assert [key for key in state if key.startswith("category_classifier.")] == ["category_classifier.class_means"]
    restored = ConstantLoss(list(PICTURES))
    checkpoint = {"state_dict": dict(state)}
    restored.on_load_checkpoint(checkpoint)
    restored.load_state_dict(checkpoint["state_dict"])
    assert torch.equal(restored.category_classifier.class_means, model.category_classifier.class_means)
    old = {"state_dict": {k: v for k, v in state.items() if not k.startswith("category_classifier.")}}
    restored.on_load_checkpoint(old)
    restored.load_state_dict(old["state_dict"])  # strict
    assert not restored.category_classifier.fitted.any()
    batch = labelled(["coffee"])
    assert restored.batch_categories(batch) == ["coffee"]  # a given category needs no classifier
    batch["category"] = [UNKNOWN_CATEGORY]
    with pytest.raises(NotFittedError, match=r"cannot predict the category of 0.png: .*checkpoint predates category "
                                              r"prediction; retrain"):
        restored.batch_categories(batch)


def test_fit_start_fits_on_every_training_normal_in_order_without_drawing_random_numbers(tmp_path):
    root = write_mvtec_ad(tmp_path / "data", categories=("a", "b"), n_train=3, size=32)
    datamodule = MVTecAD(str(root), image_size=32, crop_size=32, batch_size=2, val_fraction=0.34)
    datamodule.setup("fit")
    model = ConstantLoss(["a", "b", "c"])
    model.trainer = bare_trainer(tmp_path)
    model.trainer.datamodule = datamodule
    state = torch.get_rng_state()
    model.on_fit_start()
    assert torch.equal(torch.get_rng_state(), state)
    expected = CategoryClassifier(3)
    counts = expected.fit(DataLoader(datamodule.train_dataset, batch_size=5), model.class_indices)
    assert counts.tolist() == [2, 2, 0]  # one of 3 normals per category is held out for validation
    torch.testing.assert_close(model.category_classifier.class_means, expected.class_means, equal_nan=True)
    model.trainer.datamodule = None
    with pytest.warns(UserWarning, match="without a datamodule: the category classifier is not fitted"):
        model.on_fit_start()


def test_every_model_that_overrides_fit_start_fits_the_category_classifier():
    import anomaly_diff.models.autoencoder  # noqa: F401  (register the subclasses)
    import anomaly_diff.models.deco_diff  # noqa: F401
    import anomaly_diff.models.drdc  # noqa: F401

    def subclasses(cls):
        return {cls, *(s for child in cls.__subclasses__() for s in subclasses(child))}

    overriding = [cls for cls in subclasses(AnomalyModule) - {AnomalyModule} if "on_fit_start" in vars(cls)]
    assert overriding, "no model overrides on_fit_start: this test has nothing to check"
    for cls in overriding:
        assert "super().on_fit_start()" in inspect.getsource(cls.on_fit_start), f"{cls.__name__}.on_fit_start"
