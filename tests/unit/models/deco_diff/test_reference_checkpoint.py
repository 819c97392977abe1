"""The reference-checkpoint converter, checked against a small reference UNet's outputs (no reference code needed).

``tests/fixtures/deco_diff_reference/unet.pt.xz`` is written by ``experiments/reference_unet_parity.py
--write-fixture``: DeCo-Diff's LDM ``UNetModel`` with 32 channels, 2 levels, 1 res block, attention at both levels,
context 32 and 3 classes, every tensor random, with its inputs and outputs (one and two context tokens).
"""

import argparse
import sys
import types

import pytest
import torch

from anomaly_diff.models.deco_diff import DeCoDiff
from anomaly_diff.models.deco_diff.reference_checkpoint import (
    REFERENCE_CLASS_ORDERS,
    convert_reference_state_dict,
    load_reference_checkpoint,
    reference_class_rows,
)
from anomaly_diff.models.deco_diff.torch_model import DeCoDiffModel, UNetPreset
from tests.helpers.models import reference_unet_fixture

# The fixture's UNet as a preset: head width 16, so 2 and 4 heads; GroupNorm's 32 groups as in the LDM code
PRESET = UNetPreset(32, 2, 32, channel_mult=(1, 2), attention=(True, True), layers_per_block=1)
LDM = "model.diffusion_model."


class Unsafe:
    """A class that a weights-only load must refuse to unpickle."""


@pytest.fixture(scope="module")
def reference():
    return reference_unet_fixture()


@pytest.fixture
def state_dict(reference):
    return dict(reference["state_dict"])


CATEGORIES = ["a", "b", "c"]  # the fixture's classes, in its row order


def make_model(codec, num_classes=3, preset=PRESET):
    return DeCoDiffModel(codec, num_classes=num_classes, unet=preset).eval()


@pytest.fixture
def legacy_lightning_class(monkeypatch):
    """The class that pytorch_lightning 1.x checkpoints (the LDM's) use as a key of their "callbacks" dict."""
    names = ["pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint"]
    for name in names:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    cls = type("ModelCheckpoint", (), {"__module__": names[-1]})
    sys.modules[names[-1]].ModelCheckpoint = cls
    return cls


def checkpoint_of(layout, state_dict, legacy_lightning_class):
    """The reference's UNet weights as each kind of file holds them."""
    if layout == "training":  # train_DeCo_Diff.py: {"model": unet.state_dict(), "args": args}
        return {"model": state_dict, "args": argparse.Namespace(model_size="UNet_XS", num_classes=3, lr=1e-4)}
    if layout == "ldm":  # a Lightning checkpoint of an LDM: more classes, the autoencoder, an EMA copy, buffers
        embedding = state_dict.pop("cond_stage_model.embedding.weight")
        return {
            "state_dict": {LDM + key: value for key, value in state_dict.items()}
            | {
                "cond_stage_model.embedding.weight": torch.cat([embedding, torch.randn(5, embedding.shape[1])]),
                "first_stage_model.encoder.conv_in.weight": torch.randn(8, 3, 3, 3),
                "model_ema.diffusion_modeltime_embed0weight": torch.randn(2),
                "betas": torch.rand(10),
            },
            "callbacks": {legacy_lightning_class: {"best_model_path": "x.ckpt"}},
            "global_step": 3,
        }
    return state_dict


@pytest.mark.parametrize("layout", ["training", "ldm", "bare"])
@torch.no_grad()
def test_loaded_checkpoints_reproduce_the_reference_outputs(
    layout, tmp_path, reference, state_dict, pooling_codec, legacy_lightning_class
):
    path = tmp_path / "checkpoint.pt"
    torch.save(checkpoint_of(layout, state_dict, legacy_lightning_class), path)
    model = make_model(pooling_codec)
    load_reference_checkpoint(path, model, CATEGORIES, CATEGORIES)
    x, t = reference["x"], reference["t"]
    torch.testing.assert_close(model(x, t, reference["class_index"]), reference["output"], atol=1e-4, rtol=0)
    context = model.class_embedding(reference["context_index"])
    two_tokens = model.unet(x, t, encoder_hidden_states=context, return_dict=False)[0]
    torch.testing.assert_close(two_tokens, reference["output_two_tokens"], atol=1e-4, rtol=0)
    assert torch.equal(model.class_embedding.weight, reference["state_dict"]["cond_stage_model.embedding.weight"])


def test_conversion_maps_every_tensor_once(state_dict, pooling_codec):
    model = make_model(pooling_codec)
    converted = convert_reference_state_dict(state_dict, model)
    assert converted.keys() == {f"unet.{key}" for key in model.unet.state_dict()} | {"class_embedding.weight"}
    assert len({id(tensor) for tensor in converted.values()}) == len(state_dict)
    prefixed = {LDM + key: value for key, value in state_dict.items()}
    prefixed["cond_stage_model.embedding.weight"] = state_dict["cond_stage_model.embedding.weight"]
    from_prefixed = convert_reference_state_dict(prefixed, model)
    assert all(torch.equal(from_prefixed[key], value) for key, value in converted.items())


def test_conversion_errors_name_the_state_dict(state_dict, pooling_codec):
    del state_dict["out.2.bias"]
    with pytest.raises(ValueError, match="the state dict does not fit the model: the model's unet.conv_out.bias"):
        convert_reference_state_dict(state_dict, make_model(pooling_codec))


def test_a_missing_file_is_named(tmp_path, pooling_codec):
    with pytest.raises(FileNotFoundError, match=f"reference checkpoint {tmp_path / 'none.pt'} does not exist"):
        load_reference_checkpoint(tmp_path / "none.pt", make_model(pooling_codec), CATEGORIES)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not a checkpoint", r"is not a readable checkpoint \(.+\)"),
        ([1, 2], "holds a list, not a state dict"),
        ({"model": {"input_blocks.0.0.weight": 1.0}}, "is not a state dict: input_blocks.0.0.weight holds a float"),
        ({"model": {}, "args": Unsafe()}, r"holds \S*Unsafe, which a weights-only load refuses"),
    ],
)
def test_a_file_that_is_no_state_dict_is_named(content, message, tmp_path, pooling_codec):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(content) if isinstance(content, bytes) else torch.save(content, path)
    with pytest.raises(ValueError, match=f"reference checkpoint {path} {message}"):
        load_reference_checkpoint(path, make_model(pooling_codec), CATEGORIES, CATEGORIES)


def change_file(state_dict, change):
    if change == "unknown key":
        state_dict["input_blocks.9.0.weight"] = torch.zeros(1)
    elif change == "missing key":
        del state_dict["input_blocks.1.0.in_layers.0.weight"]
    elif change == "missing embedding":
        del state_dict["cond_stage_model.embedding.weight"]
    return state_dict


@pytest.mark.parametrize(
    ("change", "model_args", "message"),
    [
        ("unknown key", {}, "its input_blocks.9.0.weight has no counterpart in the model"),
        (
            None,
            {"preset": UNetPreset(32, 2, 32, channel_mult=(1, 2), attention=(False, True), layers_per_block=1)},
            r"its input_blocks.1.1.norm.weight \(unet.down_blocks.0.attentions.0.norm.weight\) has no counterpart",
        ),
        ("missing key", {}, "the model's unet.down_blocks.0.resnets.0.norm1.weight has no counterpart in the file"),
        ("missing embedding", {}, "the model's class_embedding.weight has no counterpart in the file"),
        (
            None,
            {"preset": UNetPreset(64, 2, 64, channel_mult=(1, 2), attention=(True, True), layers_per_block=1)},
            r"input_blocks.0.0.weight \(unet.conv_in.weight\) has shape \(32, 4, 3, 3\) in the file "
            r"vs \(64, 4, 3, 3\) in the model",
        ),
        (None, {"num_classes": 4}, "its cond_stage_model.embedding.weight has 3 classes but the model has 4"),
    ],
)
def test_a_file_that_does_not_fit_names_the_first_key(change, model_args, message, tmp_path, state_dict, pooling_codec):
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": change_file(state_dict, change)}, path)
    model = make_model(pooling_codec, **model_args)
    with pytest.raises(ValueError, match=f"reference checkpoint {path} does not fit the model: {message}"):
        load_reference_checkpoint(path, model, CATEGORIES, CATEGORIES)


def test_reference_class_rows_follow_the_reference_data_loaders():
    mvtec = sorted(REFERENCE_CLASS_ORDERS["mvtec"])  # this project's class order: sorted names
    rows = reference_class_rows(mvtec)
    # MVTECDataLoader.object_cls_dict of the reference: capsule 0, bottle 1, ..., wood 14
    assert rows[mvtec.index("bottle")] == 1 and rows[mvtec.index("capsule")] == 0 and rows[mvtec.index("wood")] == 14
    assert sorted(rows) == list(range(15))
    visa = sorted(REFERENCE_CLASS_ORDERS["visa"])
    assert [REFERENCE_CLASS_ORDERS["visa"][r] for r in reference_class_rows(visa)] == visa
    assert reference_class_rows(["x", "y"], ["y", "z", "x"]) == [2, 0]
    with pytest.raises(ValueError, match=r"reference_classes is needed: the categories \['x'\] are neither"):
        reference_class_rows(["x"])
    with pytest.raises(ValueError, match=r"categories \['q'\] are not among reference_classes"):
        reference_class_rows(["q"], ["x"])


@torch.no_grad()
def test_a_deco_diff_checkpoint_is_read_in_the_files_class_order(tmp_path, reference, state_dict, pooling_codec):
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": state_dict}, path)
    model = make_model(pooling_codec)
    load_reference_checkpoint(path, model, ["a", "b", "c"], reference_classes=["c", "a", "b"])
    embedding = reference["state_dict"]["cond_stage_model.embedding.weight"]
    assert torch.equal(model.class_embedding.weight, embedding[[1, 2, 0]])


@torch.no_grad()
def test_the_lightning_module_loads_a_reference_checkpoint(tmp_path, reference, state_dict, tiny_autoencoder_dir):
    path = tmp_path / "last.pt"
    torch.save({"model": state_dict, "args": argparse.Namespace(num_classes=3)}, path)
    module = DeCoDiff(categories=CATEGORIES, autoencoder=str(tiny_autoencoder_dir), unet=PRESET,
                      reference_checkpoint=str(path), reference_classes=CATEGORIES).eval()
    output = module.model(reference["x"], reference["t"], reference["class_index"])
    torch.testing.assert_close(output, reference["output"], atol=1e-4, rtol=0)
