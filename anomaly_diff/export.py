"""``anomaly-diff export``: a trained checkpoint as one graph, image batch and class indices in, map and score out.

Inputs, outputs, formats and the models it accepts (DeCo-Diff, DRDC's base; not the full DRDC, whose refinement
samples noise): README, section "Export". Formats: ``exported-program`` (:func:`torch.export.export`), ``onnx``
(the dynamo exporter from that program; the ``export`` extra) and ``torchscript`` (:func:`torch.jit.trace`).
"""

import argparse
import importlib.util
import json
import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn

from anomaly_diff.errors import ConfigError, MissingFileError, OutputPathError, UserError
from anomaly_diff.models.components import anomaly_map as anomaly_map_module
from anomaly_diff.models.components.anomaly_map import image_score
from anomaly_diff.utils.imports import import_class
from anomaly_diff.utils.io import atomic_write_text

FORMATS = ("exported-program", "onnx", "torchscript")
SUFFIXES = {"exported-program": ".pt2", "onnx": ".onnx", "torchscript": ".ts"}
INPUT_NAMES = ("image", "class_index")
OUTPUT_NAMES = ("anomaly_map", "pred_score")
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")

DECO_DIFF = "anomaly_diff.models.deco_diff.DeCoDiff"
DRDC_BASE = "anomaly_diff.models.drdc.DRDCBase"
DRDC = "anomaly_diff.models.drdc.DRDC"
# The class paths a checkpoint may name, with their module's own path (LightningCLI records the one configured).
_ALIASES = {
    "anomaly_diff.models.deco_diff.lightning_model.DeCoDiff": DECO_DIFF,
    "anomaly_diff.models.drdc.lightning_base.DRDCBase": DRDC_BASE,
    "anomaly_diff.models.drdc.lightning_model.DRDC": DRDC,
}
_DRDC_REFUSED = (
    "the full DRDC cannot be exported: its refinement inpaints from noise drawn afresh at every step "
    "(torch.randn_like), so no exported graph reproduces its eager maps; export its base stage instead (the "
    "DRDCBase checkpoint of configs/drdc/base/<dataset>.yaml)"
)


class DeCoDiffExport(nn.Module):
    """DeCo-Diff's test-time pipeline as a pure-tensor module: ``(image, class_index) -> (map, score)``.

    Calls :meth:`~anomaly_diff.models.deco_diff.torch_model.DeCoDiffModel.detect`, the eager path itself, so the
    exported graph computes exactly what ``DeCoDiff.predict_anomaly`` does.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor, class_index: Tensor) -> tuple[Tensor, Tensor]:
        """Anomaly maps ``(B, H, W)`` and scores ``(B,)`` of ``(B, 3, H, W)`` images of the ``(B,)`` classes."""
        output = self.model.detect(image, class_index)
        return output.anomaly_map, output.pred_score


class DRDCBaseExport(nn.Module):
    """DRDC's base model as a pure-tensor module (``class_index`` is ignored: the model is class-agnostic)."""

    def __init__(self, model: nn.Module, top_k: int) -> None:
        super().__init__()
        self.model = model
        self.top_k = top_k

    def forward(self, image: Tensor, class_index: Tensor) -> tuple[Tensor, Tensor]:
        """The base heatmap ``(B, H, W)`` and its top-k mean ``(B,)``, as ``DRDCBase.predict_anomaly``."""
        anomaly_map = self.model.anomaly_map(image)
        return anomaly_map, image_score(anomaly_map, self.top_k)


def export_module(module: nn.Module) -> nn.Module:
    """The pure-tensor module of a loaded anomaly model (a DeCoDiff or DRDCBase LightningModule), in eval mode.

    Raises:
        ConfigError: The model has no exportable form (the full DRDC, or another class).
    """
    from anomaly_diff.models.deco_diff import DeCoDiff
    from anomaly_diff.models.drdc import DRDC as DRDCModule
    from anomaly_diff.models.drdc import DRDCBase

    if isinstance(module, DeCoDiff):
        return DeCoDiffExport(module.model).eval()
    if isinstance(module, DRDCBase):
        return DRDCBaseExport(module.model, module.top_k).eval()
    if isinstance(module, DRDCModule):
        raise ConfigError(_DRDC_REFUSED)
    raise ConfigError(
        f"{type(module).__name__} cannot be exported: only DeCoDiff ({DECO_DIFF}) and DRDCBase ({DRDC_BASE}) can"
    )


@contextmanager
def _fresh_map_caches() -> Iterator[None]:
    """Empty the anomaly-map matrix caches after tracing.

    ``gaussian_blur`` and ``resize_maps`` keep their matrices in ``lru_cache``s. The eager run before tracing fills
    them with real tensors, which the trace then records as constants; a cache miss during tracing would store a
    traced (fake) tensor that later eager calls would return, so the caches are emptied afterwards whatever happened.
    """
    try:
        yield
    finally:
        anomaly_map_module._blur_matrix.cache_clear()
        anomaly_map_module._resize_matrix.cache_clear()


def _require_onnx() -> None:
    missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"--format onnx needs the packages {', '.join(missing)}: pip install anomaly-diff[export] "
            "(or pip install onnx onnxscript onnxruntime)"
        )


def trace(wrapper: nn.Module, example: tuple[Tensor, Tensor], output: Path, format: str) -> None:
    """Trace ``wrapper`` on ``example`` and save it to ``output`` in ``format`` (shapes fixed to the example's)."""
    with torch.no_grad(), _fresh_map_caches():
        wrapper(*example)  # fills the map caches with real tensors: constants of the graph
        if format == "torchscript":
            torch.jit.save(torch.jit.trace(wrapper, example, check_trace=False), str(output))
            return
        # Inside no_grad the model's own no_grad is a no-op, so the graph holds no grad-mode switches (which
        # torch.export.save cannot serialise).
        program = torch.export.export(wrapper, example, strict=False)
    if format == "exported-program":
        torch.export.save(program, output)
        return
    onnx_program = torch.onnx.export(
        program, example, dynamo=True, input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
        optimize=False, verbose=False,
    )
    onnx_program.save(str(output))


def run_artifact(path: str | Path, format: str, image: Tensor, class_index: Tensor) -> tuple[Tensor, Tensor]:
    """Load an exported artifact and run it on CPU: ``(anomaly_map, pred_score)``."""
    if format == "exported-program":
        with torch.no_grad():
            return tuple(torch.export.load(str(path)).module()(image, class_index))
    if format == "torchscript":
        with torch.no_grad():
            return tuple(torch.jit.load(str(path))(image, class_index))
    if format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed = {"image": image.numpy(), "class_index": class_index.numpy()}
        names = {node.name for node in session.get_inputs()}
        outputs = session.run(list(OUTPUT_NAMES), {name: value for name, value in feed.items() if name in names})
        return tuple(torch.from_numpy(array) for array in outputs)
    raise ConfigError(f"unknown format {format!r}: use one of {list(FORMATS)}")


def _read_checkpoint(ckpt_path: Path) -> dict:
    if not ckpt_path.is_file():
        raise MissingFileError(
            f"--ckpt_path {ckpt_path} does not exist; give a checkpoint file (<run dir>/checkpoints/*.ckpt)"
        )
    try:  # our own checkpoints: the hyper-parameters hold dataclasses, which weights_only refuses
        return torch.load(ckpt_path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as error:  # zip, EOF, pickle and torch errors of many types
        raise ConfigError(
            f"--ckpt_path {ckpt_path} is not a readable checkpoint ({error}); give a .ckpt file written by a run"
        ) from error


def export(
    ckpt_path: str | Path,
    output: str | Path | None = None,
    format: str = "exported-program",
    batch_size: int = 1,
    image_size: int | None = None,
    model_class: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Export a checkpoint's model to ``output`` (and ``<output>.json``); returns the artifact's path.

    Args:
        ckpt_path: A DeCoDiff or DRDCBase checkpoint.
        output: The artifact to write. Defaults to the checkpoint's path with the format's suffix (``.pt2``,
            ``.onnx``, ``.ts``).
        format: ``"exported-program"``, ``"onnx"`` or ``"torchscript"``.
        batch_size: The batch size the graph is fixed to.
        image_size: Side of the square input. Defaults to the crop size of the checkpoint's data module.
        model_class: The model's class path, for a checkpoint that does not name it (written outside the CLI).
        overwrite: Replace an existing ``output``.

    Raises:
        MissingFileError: No checkpoint at ``ckpt_path``.
        OutputPathError: ``output`` exists and ``overwrite`` is false.
        ConfigError: Unknown format, missing ONNX packages, unknown image size, or a model that cannot be exported.
    """
    if format not in FORMATS:
        raise ConfigError(f"unknown --format {format!r}: use one of {list(FORMATS)}")
    if batch_size < 1:
        raise ConfigError(f"--batch_size must be >= 1, got {batch_size}")
    if format == "onnx":
        _require_onnx()
    ckpt_path = Path(ckpt_path).expanduser()
    checkpoint = _read_checkpoint(ckpt_path)
    class_path = model_class or (checkpoint.get("hyper_parameters") or {}).get("_class_path")
    if not class_path:
        raise ConfigError(
            f"{ckpt_path} does not name its model class (hyper_parameters._class_path, which checkpoints of "
            f"`anomaly-diff fit` hold); give it with --model_class, e.g. --model_class {DECO_DIFF}"
        )
    class_path = _ALIASES.get(class_path, class_path)
    if class_path == DRDC:
        raise ConfigError(_DRDC_REFUSED)
    if class_path not in (DECO_DIFF, DRDC_BASE):
        raise ConfigError(
            f"{ckpt_path} is a checkpoint of {class_path}, which cannot be exported: only DeCoDiff ({DECO_DIFF}) "
            f"and DRDCBase ({DRDC_BASE}) can"
        )
    if image_size is None:
        image_size = (checkpoint.get("datamodule_hyper_parameters") or {}).get("crop_size")
        if image_size is None:
            raise ConfigError(
                f"{ckpt_path} does not record the crop size of its data; give the input side with --image_size"
            )
    output = Path(output).expanduser() if output is not None else ckpt_path.with_suffix(SUFFIXES[format])
    if output.exists() and not overwrite:
        raise OutputPathError(f"the export's output exists: {output}; remove it or give another path, or --overwrite")
    del checkpoint

    try:
        model_type = import_class(class_path)
    except ValueError as error:
        raise ConfigError(str(error)) from error
    module = model_type.load_from_checkpoint(ckpt_path, map_location="cpu").eval()
    wrapper = export_module(module)
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(batch_size, 3, image_size, image_size, generator=generator)
    class_index = torch.randint(0, module.num_classes, (batch_size,), generator=generator)

    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.partial{SUFFIXES[format]}")
    try:
        trace(wrapper, (image, class_index), partial, format)
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)

    # The largest difference from the eager model on the example batch, through the saved file.
    with torch.no_grad():
        expected = wrapper(image, class_index)
        got = run_artifact(output, format, image, class_index)
    differences = {name: float((a - b).abs().max()) for name, a, b in zip(OUTPUT_NAMES, got, expected, strict=True)}
    thresholds = [None if math.isnan(value) else value for value in module.score_thresholds.tolist()]
    record = {
        "format": format,
        "artifact": output.name,
        "checkpoint": str(ckpt_path),
        "model_class": class_path,
        "categories": list(module.categories),
        "score_thresholds": thresholds,
        "inputs": {
            "image": {"shape": [batch_size, 3, image_size, image_size], "dtype": "float32", "range": [0.0, 1.0]},
            "class_index": {"shape": [batch_size], "dtype": "int64", "meaning": "index into categories"},
        },
        "outputs": {
            "anomaly_map": {"shape": [batch_size, image_size, image_size], "dtype": "float32"},
            "pred_score": {"shape": [batch_size], "dtype": "float32"},
        },
        "max_abs_difference_from_eager": differences,
        "torch": torch.__version__,
    }
    atomic_write_text(output.with_name(output.name + ".json"), json.dumps(record, indent=2) + "\n")
    return output


def build_parser() -> argparse.ArgumentParser:
    """The ``anomaly-diff export`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="anomaly-diff export",
        description="Export a DeCoDiff or DRDCBase checkpoint: image (B, 3, H, W) in [0, 1] and class_index (B,) in, "
        "anomaly_map (B, H, W) and pred_score (B,) out.",
    )
    parser.add_argument("--ckpt_path", required=True, help="the checkpoint to export")
    parser.add_argument("--format", choices=FORMATS, default="exported-program", help="default: exported-program")
    parser.add_argument("--output", default=None, help="the artifact (default: the checkpoint's path, format suffix)")
    parser.add_argument("--batch_size", type=int, default=1, help="the fixed batch size of the graph (default 1)")
    parser.add_argument("--image_size", type=int, default=None,
                        help="side of the square input (default: the crop size of the checkpoint's data)")
    parser.add_argument("--model_class", default=None,
                        help="the model's class path, for a checkpoint that does not record it")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    return parser


def export_main(args: list[str]) -> None:
    """``anomaly-diff export ...``: export, print the artifact and its check; bad input ends with one line, exit 1."""
    options = build_parser().parse_args(args)
    try:
        path = export(options.ckpt_path, options.output, options.format, options.batch_size, options.image_size,
                      options.model_class, options.overwrite)
    except UserError as error:
        if os.environ.get("ANOMALY_DIFF_TRACEBACK"):
            raise
        print(f"anomaly-diff: error: {type(error).__name__}: {error}", file=sys.stderr)
        raise SystemExit(1) from error
    record = json.loads(path.with_name(path.name + ".json").read_text(encoding="utf-8"))
    differences = ", ".join(f"{k} {v:.2e}" for k, v in record["max_abs_difference_from_eager"].items())
    print(f"Exported {record['model_class'].rpartition('.')[2]} ({options.format}) to {path}; "
          f"max |exported - eager| on a random batch: {differences}; metadata: {path.name}.json")
