import importlib.metadata
import io
import json
import random

import numpy as np
import torch

from anomaly_diff.callbacks.reproducibility import (
    RandomStateCheckpoint,
    RunRecord,
    collect_random_states,
    environment_record,
)
from tests.helpers.trainers import bare_trainer


def _draws():
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def test_random_states_round_trip_through_a_weights_only_checkpoint():
    callback = RandomStateCheckpoint()
    buffer = io.BytesIO()
    torch.save({"callbacks": {"RandomStateCheckpoint": callback.state_dict()}}, buffer)
    expected = _draws()
    _draws()  # move every generator on
    buffer.seek(0)
    callback.load_state_dict(torch.load(buffer, weights_only=True)["callbacks"]["RandomStateCheckpoint"])
    assert _draws() == expected


def test_state_without_random_states_is_ignored():
    before = collect_random_states()["torch"]
    RandomStateCheckpoint().load_state_dict({})
    assert torch.equal(collect_random_states()["torch"], before)


def test_environment_record_holds_seed_and_versions(tmp_path):
    record = environment_record(3)
    assert record["seed"] == 3 and record["torch"] == torch.__version__
    assert record["anomaly_diff"] == importlib.metadata.version("anomaly-diff")  # as `anomaly-diff --version`
    assert {"torch", "lightning", "numpy"} <= record["packages"].keys()
    callback = RunRecord.__new__(RunRecord)  # only save_config is exercised: it reads .config
    callback.config = {"seed_everything": 5}
    callback.save_config(bare_trainer(tmp_path), None, "fit")
    assert json.loads((tmp_path / "environment.json").read_text())["seed"] == 5
    assert not list(tmp_path.glob(".*.tmp"))
