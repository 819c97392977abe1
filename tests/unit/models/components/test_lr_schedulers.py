from functools import partial

import pytest
import torch
from diffusers.optimization import get_cosine_schedule_with_warmup
from jsonargparse import ArgumentParser
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LRSchedulerCallable

from anomaly_diff.models.base import AnomalyModule
from anomaly_diff.models.components.lr_schedulers import WarmupCosineLR


def _optimizer():
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)


@pytest.mark.parametrize(("total", "warmup_fraction", "cosine_length"), [(800, 0.0125, 1.5), (97, 0.1, 1.0)])
def test_factors_equal_the_reference_schedule(total, warmup_fraction, cosine_length):
    ours = WarmupCosineLR(_optimizer(), warmup_fraction, cosine_length, total_steps=total)
    reference = get_cosine_schedule_with_warmup(
        _optimizer(), num_warmup_steps=round(warmup_fraction * total), num_training_steps=int(cosine_length * total)
    )
    for step in range(total + 1):
        assert ours.lr_lambdas[0](step) == pytest.approx(reference.lr_lambdas[0](step), abs=1e-9), step


def test_length_can_be_set_after_construction():
    optimizer = _optimizer()
    scheduler = WarmupCosineLR(optimizer, warmup_fraction=0.5, cosine_length=1.0)
    assert optimizer.param_groups[0]["lr"] == 0.0
    scheduler.set_total_steps(4)
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5)


def test_stepping_without_a_length_and_infinite_runs_are_explained():
    scheduler = WarmupCosineLR(_optimizer())
    with pytest.raises(RuntimeError, match="set_total_steps"):
        scheduler.lr_lambdas[0](3)
    with pytest.raises(ValueError, match="trainer.max_epochs"):
        scheduler.set_total_steps(float("inf"))
    with pytest.raises(ValueError, match="warmup_fraction"):
        WarmupCosineLR(_optimizer(), warmup_fraction=1.0)


def test_config_builds_the_scheduler_as_a_callable():
    parser = ArgumentParser()
    parser.add_argument("--scheduler", type=LRSchedulerCallable)
    config = parser.parse_object(
        {
            "scheduler": {
                "class_path": "anomaly_diff.models.components.lr_schedulers.WarmupCosineLR",
                "init_args": {"warmup_fraction": 0.2, "cosine_length": 1.0},
            }
        }
    )
    factory = parser.instantiate(config).scheduler
    scheduler = factory(_optimizer())
    assert isinstance(scheduler, WarmupCosineLR) and scheduler.warmup_fraction == 0.2 and scheduler.total_steps is None


class _Linear(AnomalyModule):
    def __init__(self, scheduler):
        super().__init__(["a"], scheduler=scheduler)
        self.weight = torch.nn.Parameter(torch.ones(1))

    def compute_losses(self, batch):
        return {"loss": (self.weight * batch["image"]).square().mean()}

    def predict_anomaly(self, batch):
        raise NotImplementedError


def test_configure_optimizers_gives_the_run_length(tmp_path):
    images = torch.rand(8, 1)
    loader = torch.utils.data.DataLoader([{"image": x, "label": torch.tensor(0)} for x in images], batch_size=2)
    model = _Linear(partial(WarmupCosineLR, warmup_fraction=0.25, cosine_length=1.0))
    trainer = Trainer(
        max_epochs=3,
        accumulate_grad_batches=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, loader)
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.total_steps == 6  # 3 epochs x 4 batches / 2 accumulated
    assert scheduler.last_epoch == 6
