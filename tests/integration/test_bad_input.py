"""Bad input end to end through the command line: each case ends with its exit code and one clear line.

Every case runs ``anomaly_diff.cli.main`` in-process on a tiny MVTec AD layout (32 px, one category) broken in one
way. Input errors (data, weights, files, hyper-parameters) end with exit code 1 and one last stderr line
``anomaly-diff: error: ...`` that names the culprit (a path, key or value) and says what would be right;
configuration errors (unknown key, wrong type, missing config file) are LightningCLI's usage errors, exit code 2.
No case shows a traceback. The README's Troubleshooting table lists exactly these cases (checked below).
"""

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from anomaly_diff.cli import main
from tests.helpers.configs import write_tiny_config
from tests.helpers.data import corrupt_file, truncate_file, write_image, write_mvtec_ad
from tests.helpers.models import reference_unet_fixture, save_tiny_autoencoder

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Run:
    """What a case runs: the CLI arguments, the exit code, and what the last line must contain."""

    args: list[str]
    code: int
    culprit: list[str]  # each must appear in the message (path, key, value)
    hint: str  # a fragment of what the message says would be right (regex, case-insensitive)


def _data(tmp_path: Path) -> Path:
    """One category ``a``: 2 training normals, 1 normal and 2 defective (crack, scratch) test images, 32x32."""
    return write_mvtec_ad(tmp_path / "mvtec", categories=("a",), n_train=2, n_good=1, n_defect=1, size=32)


def _config(tmp_path: Path, root: Path | str, model: dict | None = None, **trainer) -> Path:
    return write_tiny_config(tmp_path / "config.yaml", root, run_name="bad", model=model, trainer=trainer,
                             heatmaps={"per_category": 0})


def _deco_diff(autoencoder: Path | str, **init_args) -> dict:
    return {
        "class_path": "anomaly_diff.models.deco_diff.DeCoDiff",
        "init_args": {"autoencoder": str(autoencoder), "unet": "tiny", "patch_sizes": [1], "patch_size_probs": [1.0],
                      **init_args},
    }


@pytest.fixture(scope="module")
def tiny_autoencoder(tmp_path_factory) -> Path:
    return save_tiny_autoencoder(tmp_path_factory.mktemp("vae") / "vae")


@pytest.fixture(scope="module")
def autoencoder_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint of the tiny Autoencoder model (one epoch on the fixture data)."""
    tmp_path = tmp_path_factory.mktemp("ae_ckpt")
    main(["fit", "--config", str(_config(tmp_path, _data(tmp_path))), "--test_after_fit=false"])
    (ckpt,) = (tmp_path / "runs").rglob("last.ckpt")
    return ckpt


@pytest.fixture(scope="module")
def deco_diff_checkpoint(tmp_path_factory, tiny_autoencoder) -> Path:
    """A checkpoint of a tiny class-conditioned DeCoDiff model trained on category ``a`` (one epoch)."""
    tmp_path = tmp_path_factory.mktemp("deco_ckpt")
    config = _config(tmp_path, _data(tmp_path), _deco_diff(tiny_autoencoder))
    main(["fit", "--config", str(config), "--test_after_fit=false"])
    (ckpt,) = (tmp_path / "runs").rglob("last.ckpt")
    return ckpt


# --- the cases: id -> builder(tmp_path, fixture getter) -> Run

def missing_data_root(tmp_path, fx):
    return Run(["fit", "--config", str(_config(tmp_path, tmp_path / "nowhere"))], 1,
               [str(tmp_path / "nowhere")], "does not exist")


def data_root_is_a_file(tmp_path, fx):
    root = tmp_path / "root.txt"
    root.write_text("not a directory")
    return Run(["fit", "--config", str(_config(tmp_path, root))], 1, [str(root)], "is not a directory")


def corrupt_image(tmp_path, fx):
    root = _data(tmp_path)
    bad = corrupt_file(root / "a" / "train" / "good" / "000.png")
    return Run(["fit", "--config", str(_config(tmp_path, root))], 1, [str(bad)], "replace it with a valid copy")


def truncated_png(tmp_path, fx):
    root = _data(tmp_path)
    bad = truncate_file(root / "a" / "test" / "good" / "000.png")
    return Run(["test", "--config", str(_config(tmp_path, root))], 1, [str(bad)], "truncated")


def missing_mask(tmp_path, fx):
    root = _data(tmp_path)
    (root / "a" / "ground_truth" / "crack" / "000_mask.png").unlink()
    return Run(["fit", "--config", str(_config(tmp_path, root))], 1,
               [str(root / "a" / "test" / "crack" / "000.png"), "000_mask.png"], "needs a ground-truth mask")


def mask_size_mismatch(tmp_path, fx):
    root = _data(tmp_path)
    mask = write_image(root / "a" / "ground_truth" / "scratch" / "000_mask.png", np.zeros((16, 16), np.uint8))
    return Run(["fit", "--config", str(_config(tmp_path, root))], 1, [str(mask), "16x16"], "must have its image's size")


def unknown_category(tmp_path, fx):
    root = _data(tmp_path)
    return Run(["fit", "--config", str(_config(tmp_path, root)), "--data.init_args.categories=[a,zebra]"], 1,
               ["zebra"], "known categories")


def empty_training_split(tmp_path, fx):
    root = _data(tmp_path)
    for image in (root / "a" / "train" / "good").iterdir():
        image.unlink()
    return Run(["fit", "--config", str(_config(tmp_path, root))], 1,
               [str(root / "a" / "train" / "good")], "no images found")


def missing_test_split(tmp_path, fx):
    root = _data(tmp_path)
    shutil.rmtree(root / "a" / "test")
    shutil.rmtree(root / "a" / "ground_truth")
    return Run(["test", "--config", str(_config(tmp_path, root))], 1, ["['a']"], "needs each selected category's test")


def config_key_typo(tmp_path, fx):
    return Run(["fit", "--config", str(_config(tmp_path, _data(tmp_path))), "--trainer.max_epocs=1"], 2,
               ["max_epocs"], "unrecognized|not expected|does not accept")


def wrong_type_for_a_key(tmp_path, fx):
    return Run(["fit", "--config", str(_config(tmp_path, _data(tmp_path))), "--trainer.max_epochs=many"], 2,
               ["max_epochs", "many"], "int")


def missing_config_file(tmp_path, fx):
    return Run(["fit", "--config", str(tmp_path / "missing.yaml")], 2, [str(tmp_path / "missing.yaml")],
               "does not exist|not a valid|no such|unable")


def out_of_range_data_argument(tmp_path, fx):
    return Run(["fit", "--config", str(_config(tmp_path, _data(tmp_path))), "--data.init_args.val_fraction=1.5"], 1,
               ["val_fraction=1.5"], r"must be in \[0, 1\)")


def deco_diff_autoencoder_missing(tmp_path, fx):
    model = _deco_diff(tmp_path / "no_vae")
    return Run(["fit", "--config", str(_config(tmp_path, _data(tmp_path), model))], 1, [str(tmp_path / "no_vae")],
               "configs/autoencoder")


def deco_diff_chain_out_of_range(tmp_path, fx):
    model = _deco_diff(fx("tiny_autoencoder"), num_train_timesteps=10, reverse_steps=None, timesteps=[10, 5, 0])
    return Run(["fit", "--config", str(_config(tmp_path, _data(tmp_path), model))], 1, ["timesteps=[10, 5, 0]"],
               r"must be strictly decreasing timesteps in \[0, 10\)")


def deco_diff_reference_checkpoint_missing(tmp_path, fx):
    missing = tmp_path / "released" / "last.pt"
    model = _deco_diff(fx("tiny_autoencoder"), reference_checkpoint=str(missing), reference_classes=["a"])
    return Run(["fit", "--config", str(_config(tmp_path, _data(tmp_path), model))], 1, [str(missing)],
               "give a DeCo-Diff training checkpoint")


def deco_diff_reference_checkpoint_of_another_size(tmp_path, fx):
    path = tmp_path / "released.pt"
    torch.save({"model": reference_unet_fixture()["state_dict"]}, path)  # a 2-level UNet; the config's is "tiny"
    model = _deco_diff(fx("tiny_autoencoder"), reference_checkpoint=str(path), reference_classes=["a", "b", "c"])
    return Run(["fit", "--config", str(_config(tmp_path, _data(tmp_path), model))], 1,
               [str(path), "input_blocks.1.1.norm.weight"], "give a checkpoint of the model's UNet layout")


def deco_diff_max_mask_ratio_above_1(tmp_path, fx):
    model = _deco_diff(fx("tiny_autoencoder"), max_mask_ratio=1.5)
    return Run(["fit", "--config", str(_config(tmp_path, _data(tmp_path), model))], 1, ["max_mask_ratio", "1.5"],
               r"must lie in \[0, 1\]")


def drdc_backbone_weights_missing(tmp_path, fx):
    model = {"class_path": "anomaly_diff.models.drdc.DRDCBase",
             "init_args": {"weights": str(tmp_path / "lite0.pth"), "input_size": 32, "hidden_dim": 16, "num_heads": 2,
                           "num_encoder_layers": 1, "num_decoder_layers": 1, "feedforward_dim": 16}}
    return Run(["fit", "--config", str(_config(tmp_path, _data(tmp_path), model))], 1, [str(tmp_path / "lite0.pth")],
               "give `weights` as the path")


def drdc_stage_checkpoint_missing(tmp_path, fx):
    model = {"class_path": "anomaly_diff.models.drdc.DRDC",
             "init_args": {"base_checkpoint": str(tmp_path / "base.ckpt"),
                           "refinement_checkpoint": str(tmp_path / "refinement.ckpt")}}
    return Run(["fit", "--config", str(_config(tmp_path, _data(tmp_path), model))], 1,
               ["base_checkpoint", str(tmp_path / "base.ckpt")], "train the stage first")


def drdc_num_sets_below_1(tmp_path, fx):
    model = {"class_path": "anomaly_diff.models.drdc.DRDCRefinement",
             "init_args": {"block_out_channels": [8, 8], "norm_num_groups": 8, "inpainting": {"num_sets": 0}}}
    return Run(["fit", "--config", str(_config(tmp_path, _data(tmp_path), model))], 1, ["num_sets", "0"], ">= 1")


def drdc_gamma_negative(tmp_path, fx):
    model = {"class_path": "anomaly_diff.models.drdc.DRDC",
             "init_args": {"base_checkpoint": str(tmp_path / "base.ckpt"),
                           "refinement_checkpoint": str(tmp_path / "refinement.ckpt"), "fusion": {"gamma": -1.0}}}
    return Run(["fit", "--config", str(_config(tmp_path, _data(tmp_path), model))], 1, ["gamma", "-1.0"], ">= 0")


def checkpoint_from_another_model(tmp_path, fx):
    model = _deco_diff(fx("tiny_autoencoder"))
    ckpt = fx("autoencoder_checkpoint")
    return Run(["test", "--config", str(_config(tmp_path, _data(tmp_path), model)), "--ckpt_path", str(ckpt)], 1,
               [str(ckpt), "Autoencoder", "DeCoDiff"], "checkpoint of a DeCoDiff run")


def nonexistent_ckpt_path(tmp_path, fx):
    ckpt = tmp_path / "missing.ckpt"
    return Run(["test", "--config", str(_config(tmp_path, _data(tmp_path))), "--ckpt_path", str(ckpt)], 1,
               [str(ckpt)], "does not exist")


def ckpt_path_not_a_checkpoint(tmp_path, fx):
    ckpt = corrupt_file(tmp_path / "broken.ckpt")
    return Run(["test", "--config", str(_config(tmp_path, _data(tmp_path))), "--ckpt_path", str(ckpt)], 1,
               [str(ckpt)], "not a readable checkpoint")


def unwritable_output_directory(tmp_path, fx):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the run directory's parent should be")
    config = _config(tmp_path, _data(tmp_path))
    return Run(["fit", "--config", str(config), f"--trainer.logger.init_args.save_dir={blocker / 'runs'}"], 1,
               [str(blocker)], "writable directory")


def category_unknown_to_the_checkpoint(tmp_path, fx):
    root = write_mvtec_ad(tmp_path / "mvtec", categories=("a", "z"), n_train=2, n_good=1, n_defect=1, size=32)
    ckpt = fx("deco_diff_checkpoint")
    model = _deco_diff(fx("tiny_autoencoder"))
    return Run(["test", "--config", str(_config(tmp_path, root, model)), "--ckpt_path", str(ckpt)], 1, ["'z'"],
               r"knows \['a'\]")


def predict_path_missing(tmp_path, fx):
    missing = tmp_path / "incoming"
    return Run(["predict", "--config", str(_config(tmp_path, _data(tmp_path))), "--ckpt_path",
                str(fx("autoencoder_checkpoint")), f"--data.path={missing}"], 1, [str(missing)], "images to predict")


def predict_category_with_an_old_checkpoint(tmp_path, fx):
    checkpoint = torch.load(fx("autoencoder_checkpoint"), weights_only=False)
    del checkpoint["state_dict"]["category_classifier.class_means"]  # as written before category prediction existed
    torch.save(checkpoint, old := tmp_path / "old.ckpt")
    loose = write_image(tmp_path / "incoming" / "loose.png", np.zeros((32, 32, 3), dtype=np.uint8))
    return Run(["predict", "--config", str(_config(tmp_path, _data(tmp_path))), "--ckpt_path", str(old),
                f"--data.path={loose.parent}", "--data.init_args.categories=[a,z]"],
               1, [str(loose)], r"predates category prediction; retrain the model .*<path>/<category>/")


CASES: dict[str, Callable] = {
    case.__name__: case
    for case in (
        missing_data_root, data_root_is_a_file, corrupt_image, truncated_png, missing_mask, mask_size_mismatch,
        unknown_category, empty_training_split, missing_test_split, config_key_typo, wrong_type_for_a_key,
        missing_config_file, out_of_range_data_argument, deco_diff_autoencoder_missing, deco_diff_chain_out_of_range,
        deco_diff_reference_checkpoint_missing, deco_diff_reference_checkpoint_of_another_size,
        deco_diff_reference_checkpoint_missing, deco_diff_reference_checkpoint_of_another_size,
        deco_diff_max_mask_ratio_above_1, drdc_backbone_weights_missing, drdc_stage_checkpoint_missing,
        drdc_num_sets_below_1, drdc_gamma_negative, checkpoint_from_another_model, nonexistent_ckpt_path,
        ckpt_path_not_a_checkpoint,
        unwritable_output_directory, category_unknown_to_the_checkpoint, predict_path_missing,
        predict_category_with_an_old_checkpoint,
    )
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_with_one_line_naming_the_culprit(case, tmp_path, request, capsys, monkeypatch):
    monkeypatch.delenv("ANOMALY_DIFF_TRACEBACK", raising=False)
    run = CASES[case](tmp_path, request.getfixturevalue)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(run.args)
    err = capsys.readouterr().err
    assert exit_info.value.code == run.code, err
    assert "Traceback" not in err
    if run.code == 1:
        message = err.strip().splitlines()[-1]
        assert message.startswith("anomaly-diff: error: "), err
    else:  # a configuration error: LightningCLI's usage message, or the one line of a --config that names nothing
        message = err
        assert "usage:" in err or (err.startswith("anomaly-diff: error: ") and err.count("\n") == 1), err
    for culprit in run.culprit:
        assert culprit in message, message
    assert re.search(run.hint, message, re.IGNORECASE), message


def test_readme_troubleshooting_table_lists_every_case():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Troubleshooting", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\| `([a-z0-9_]+)` \|", section, re.MULTILINE)
    assert listed == list(CASES)
