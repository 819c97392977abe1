"""Load the DeCo-Diff reference's UNet weights (farzad-bz/DeCo-Diff, an LDM ``UNetModel``) into a DeCoDiffModel.

Two kinds of file hold them:

- the reference's training output ``{"model": unet.state_dict(), "args": argparse.Namespace}``
  (``train_DeCo_Diff.py``): keys like ``input_blocks.1.0.in_layers.0.weight``, and the class embedding
  ``cond_stage_model.embedding.weight`` that the reference keeps inside its UNet;
- an LDM checkpoint ``{"state_dict": ...}`` (e.g. the class-conditional cin256-v2), which the reference starts
  training from: the keys under ``model.diffusion_model.`` and the first ``num_classes`` rows of
  ``cond_stage_model.embedding.weight``. Its other keys (autoencoder, EMA copy, schedule buffers) are ignored.

Class indices: the reference numbers MVTec AD's and VisA's categories in a fixed order of its own
(``object_cls_dict`` in ``MVTECDataLoader.py`` / ``VISADataLoader.py``), this project by the sorted category list;
:func:`reference_class_rows` gives, for each of the model's categories, its row in the file's class embedding.

The UNet keys are renamed by diffusers' own converter (``convert_ldm_unet_checkpoint``, the one behind
``from_single_file``); it needs nothing of the model's config but ``layers_per_block`` (head counts and channels
live in the shapes). The class embedding has no diffusers counterpart (the diffusers UNet takes the context as
input) and maps to ``DeCoDiffModel.class_embedding``.
"""

import argparse
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from diffusers.loaders.single_file_utils import LDM_UNET_KEY, convert_ldm_unet_checkpoint
from torch import Tensor

from anomaly_diff.errors import ConfigError, MissingFileError
from anomaly_diff.models.deco_diff.torch_model import DeCoDiffModel

EMBEDDING_KEY = "cond_stage_model.embedding.weight"

# The reference's class index of each category (its data loaders' ``object_cls_dict``), listed by index.
REFERENCE_CLASS_ORDERS: dict[str, tuple[str, ...]] = {
    "mvtec": ("capsule", "bottle", "grid", "leather", "metal_nut", "tile", "transistor", "zipper", "cable", "carpet",
              "hazelnut", "pill", "screw", "toothbrush", "wood"),
    "visa": ("candle", "cashew", "fryum", "macaroni2", "pcb2", "pcb4", "capsules", "chewinggum", "macaroni1", "pcb1",
             "pcb3", "pipe_fryum"),
}


class _PlaceholderClass:
    """Stands in for a class that an old checkpoint names but never instantiates."""


# What torch.load(weights_only=True) may unpickle besides tensors and containers: the reference's ``args``, and
# the class that LDM checkpoints (pytorch_lightning 1.x) use as a key of their "callbacks" dict, which fails
# weights_only loads ("Unsupported class pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
# flowtyone/ComfyUI-Flowty-LDSR#8); a placeholder under its name keeps the load safe.
_SAFE_GLOBALS = [
    argparse.Namespace,
    (_PlaceholderClass, "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"),
]


def reference_class_rows(categories: Sequence[str], reference_classes: Sequence[str] | None = None) -> list[int]:
    """The row of each of ``categories`` in a reference checkpoint's class embedding.

    Args:
        categories: The model's categories, in its class-index order.
        reference_classes: The checkpoint's category of each row, in row order. ``None``: the reference's own order
            for MVTec AD or VisA (:data:`REFERENCE_CLASS_ORDERS`), whichever holds exactly ``categories``.

    Raises:
        ValueError: A category is not among ``reference_classes``, or ``reference_classes`` is ``None`` and the
            categories are neither MVTec AD's nor VisA's.
    """
    if reference_classes is None:
        known = [order for order in REFERENCE_CLASS_ORDERS.values() if set(order) == set(categories)]
        if not known:
            raise ConfigError(
                f"reference_classes is needed: the categories {list(categories)} are neither MVTec AD's nor VisA's, so "
                "the reference checkpoint's class order is unknown; give the category of each class-embedding row"
            )
        reference_classes = known[0]
    missing = [name for name in categories if name not in reference_classes]
    if missing:
        raise ConfigError(f"categories {missing} are not among reference_classes {list(reference_classes)}")
    return [list(reference_classes).index(name) for name in categories]


def convert_reference_state_dict(
    state_dict: Mapping[str, Tensor], model: DeCoDiffModel, class_rows: Sequence[int] | None = None
) -> dict[str, Tensor]:
    """Rename a reference UNet state dict to ``model``'s ``unet.*`` and ``class_embedding.weight`` keys.

    Args:
        state_dict: The reference's keys, with or without the LDM prefix ``model.diffusion_model.`` (with it, only
            the prefixed keys and ``cond_stage_model.embedding.weight`` are read, as the reference does).
        model: The model whose UNet and class embedding the weights are for.
        class_rows: The file's class-embedding row of each of the model's classes (:func:`reference_class_rows`).
            ``None``: the first ``num_classes`` rows, as the reference takes an LDM checkpoint's.

    Returns:
        One tensor per key of ``model.unet`` and ``model.class_embedding``.

    Raises:
        ValueError: A key of the state dict that the model lacks, a key of the model that the state dict lacks,
            fewer classes than the model's, or a shape that differs (the first such key is named).
    """
    return _convert(state_dict, model, "the state dict", class_rows)


def load_reference_checkpoint(
    path: str | Path, model: DeCoDiffModel, categories: Sequence[str], reference_classes: Sequence[str] | None = None
) -> None:
    """Load a reference training checkpoint, an LDM checkpoint or a bare reference state dict into ``model``.

    Only ``model.unet`` and ``model.class_embedding`` are loaded (strictly); the codec is left as it is. The file is
    read with ``torch.load(weights_only=True)``: tensors and containers only, plus the reference's
    ``argparse.Namespace`` of arguments; anything else is refused rather than unpickled.

    Args:
        path: The file.
        model: The model to load into.
        categories: The model's categories, in its class-index order.
        reference_classes: The category of each class-embedding row of a DeCo-Diff checkpoint (see
            :func:`reference_class_rows`; ``None``: the reference's MVTec AD or VisA order). An LDM checkpoint's
            classes are not categories: its first rows are taken, as the reference does.

    Raises:
        MissingFileError: ``path`` is not a file.
        ValueError: The file is not a checkpoint of this kind, or it does not fit the model (see
            :func:`convert_reference_state_dict`); the message names the file and the first key that does not fit.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(
            f"reference checkpoint {path} does not exist; give a DeCo-Diff training checkpoint (.pt) or an LDM .ckpt"
        )
    state_dict = _read(path)
    ldm = any(key.startswith(LDM_UNET_KEY) for key in state_dict)
    class_rows = None if ldm else reference_class_rows(categories, reference_classes)
    converted = _convert(state_dict, model, f"reference checkpoint {path}", class_rows)
    model.unet.load_state_dict(
        {key.removeprefix("unet."): t for key, t in converted.items() if key.startswith("unet.")}
    )
    model.class_embedding.load_state_dict({"weight": converted["class_embedding.weight"]})


def _read(path: Path) -> Mapping:
    """The state dict in a file: its ``"model"`` entry, its ``"state_dict"`` entry, or the file's dict itself."""
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip, EOF and torch errors of many types
        message = str(error)
        refused = re.search(r"GLOBAL (\S+)", message)
        if refused:
            raise ConfigError(
                f"reference checkpoint {path} holds {refused.group(1)}, which a weights-only load refuses; if you "
                "trust the file, save its state dict alone with torch.save(torch.load(path, weights_only=False)"
                "['state_dict' or 'model'], new_path) and give that"
            ) from None
        unpickler = re.search(r"WeightsUnpickler error:\s*(.+)", message)  # the reason in torch's long message
        raise ConfigError(
            f"reference checkpoint {path} is not a readable checkpoint ({unpickler.group(1) if unpickler else message})"
        ) from None
    if not isinstance(checkpoint, Mapping):
        raise ConfigError(f"reference checkpoint {path} holds a {type(checkpoint).__name__}, not a state dict")
    for key in ("model", "state_dict"):
        if isinstance(checkpoint.get(key), Mapping):
            return checkpoint[key]
    return checkpoint


def _convert(
    state_dict: Mapping, model: DeCoDiffModel, source: str, class_rows: Sequence[int] | None
) -> dict[str, Tensor]:
    """:func:`convert_reference_state_dict`, with ``source`` naming the state dict in error messages."""
    # The reference's layout: the UNet's keys plus the class embedding (train_DeCo_Diff.py, "if not from_scratch")
    prefixed = any(key.startswith(LDM_UNET_KEY) for key in state_dict)
    reference = {
        key.removeprefix(LDM_UNET_KEY): value
        for key, value in state_dict.items()
        if not prefixed or key.startswith(LDM_UNET_KEY) or key == EMBEDDING_KEY
    }
    for key, value in reference.items():
        if not isinstance(value, Tensor):
            raise ConfigError(f"{source} is not a state dict: {key} holds a {type(value).__name__}, not a tensor")

    # diffusers' converter drops the keys it does not know, and copies the tensors it maps without touching them:
    # a tensor's identity tells which file key each renamed key came from.
    renamed = convert_ldm_unet_checkpoint(
        {LDM_UNET_KEY + key: value for key, value in reference.items() if key != EMBEDDING_KEY}, model.unet.config
    )
    file_key_of_id = {id(value): key for key, value in reference.items()}
    model_key = {file_key_of_id[id(value)]: f"unet.{key}" for key, value in renamed.items() if value is not None}
    model_key[EMBEDDING_KEY] = "class_embedding.weight"

    target = {f"unet.{key}": value.shape for key, value in model.unet.state_dict().items()}
    target["class_embedding.weight"] = model.class_embedding.weight.shape
    for key in reference:
        if model_key.get(key) not in target:
            counterpart = f" ({model_key[key]})" if key in model_key else ""
            raise ConfigError(
                f"{source} does not fit the model: its {key}{counterpart} has no counterpart in the model; "
                "give a checkpoint of the model's UNet layout"
            )
    file_key = {model_key[key]: key for key in reference}
    for key in target:
        if key not in file_key:
            raise ConfigError(
                f"{source} does not fit the model: the model's {key} has no counterpart in the file; "
                "give a checkpoint of the model's UNet layout"
            )

    converted = {key: reference[file_key[key]] for key in target}
    embedding, num_classes = converted["class_embedding.weight"], model.class_embedding.num_embeddings
    rows = list(range(num_classes)) if class_rows is None else list(class_rows)
    if embedding.ndim == 2 and (len(rows) != num_classes or max(rows) >= len(embedding)):
        raise ConfigError(
            f"{source} does not fit the model: its {EMBEDDING_KEY} has {len(embedding)} classes but the model "
            f"has {num_classes} (rows {rows} wanted)"
        )
    if embedding.ndim == 2:  # by default the first rows, as the reference keeps the first of an LDM's 1000 classes
        converted["class_embedding.weight"] = embedding[rows]
    for key, shape in target.items():
        if converted[key].shape != shape:
            raise ConfigError(
                f"{source} does not fit the model: {file_key[key]} ({key}) has shape {tuple(converted[key].shape)} "
                f"in the file vs {tuple(shape)} in the model; give a checkpoint of the model's UNet size"
            )
    return converted
