"""Non-finite values end to end through the command line: a NaN loss stops training with the step and the term;
a NaN anomaly map stops the test with the image's path. Both are one line and exit code 1, never a metric."""

from pathlib import Path

import pytest
import torch

from anomaly_diff.cli import main
from tests.helpers.configs import TINY_AUTOENCODER, write_tiny_config
from tests.helpers.data import write_mvtec_ad


def _config(tmp_path: Path, lr: float = 1e-3) -> Path:
    root = write_mvtec_ad(tmp_path / "mvtec", categories=("a",), n_train=4, n_good=1, n_defect=1, size=32)
    optimizer = {"class_path": "torch.optim.SGD", "init_args": {"lr": lr}}
    model = {**TINY_AUTOENCODER, "init_args": {**TINY_AUTOENCODER["init_args"], "optimizer": optimizer}}
    return write_tiny_config(tmp_path / "config.yaml", root, run_name="nan", model=model, trainer={"max_epochs": 3})


def _fails(args: list[str], capsys) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("anomaly-diff: error: "), err
    return last


def test_diverging_training_stops_naming_the_step_and_the_loss_term(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ANOMALY_DIFF_TRACEBACK", raising=False)
    message = _fails(["fit", "--config", str(_config(tmp_path, lr=1e30))], capsys)
    assert "NonFiniteLossError: non-finite training loss term '" in message
    assert "at global step " in message and "lower the learning rate" in message
    assert not list((tmp_path / "runs").rglob("metrics.json"))


def test_nan_in_an_anomaly_map_stops_the_test_naming_the_image(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ANOMALY_DIFF_TRACEBACK", raising=False)
    config = _config(tmp_path)
    main(["fit", "--config", str(config), "--trainer.max_epochs=1", "--test_after_fit=false"])
    (last,) = (tmp_path / "runs").rglob("last.ckpt")
    checkpoint = torch.load(last, weights_only=False, map_location="cpu")
    checkpoint["state_dict"]["vae.decoder.conv_out.bias"][0] = float("nan")  # every map becomes NaN
    broken = tmp_path / "broken.ckpt"
    torch.save(checkpoint, broken)

    message = _fails(["test", "--config", str(config), "--ckpt_path", str(broken)], capsys)
    first_image = tmp_path / "mvtec" / "a" / "test" / "crack" / "000.png"
    assert f"InvalidSampleError: test image {first_image}: " in message
    assert "anomaly map has NaN or Inf values" in message and "check its checkpoint" in message
    assert len(list((tmp_path / "runs").rglob("metrics.json"))) == 0
