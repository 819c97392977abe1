"""Parity of this project's DeCo-Diff UNet with the reference's, through the checkpoint converter.

For every reference size (``UNet_XS`` .. ``UNet_XL`` of DeCo-Diff's ``models.py``: 15 classes, 32 x 32 latents), the
reference UNet gets random weights (every tensor, fixed seed), :func:`convert_reference_state_dict` loads them into
a :class:`DeCoDiffModel` of the same preset, and both predict on the same latents, timesteps and classes (batch 2,
float32, CPU). ``--write-fixture`` instead regenerates the small reference UNet and its outputs that
``tests/unit/models/deco_diff/test_reference_checkpoint.py`` checks the converter with.

The reference code is not part of this repository: see ``experiments/deco_diff_reference.py`` for how to get it.
``experiments/reference_parity.py`` adds these rows to ``experiments/results/reference_parity.md``.

    python experiments/reference_unet_parity.py [--reference DIR] [--threads 1]
    python experiments/reference_unet_parity.py --write-fixture

Prints a markdown table (or writes the fixture).
"""

from __future__ import annotations

import argparse
import gc
import io
import lzma
import sys
from pathlib import Path

import torch
from deco_diff_reference import DEFAULT_REFERENCE, reference_code
from torch import nn

from anomaly_diff.models.deco_diff.reference_checkpoint import convert_reference_state_dict
from anomaly_diff.models.deco_diff.torch_model import DeCoDiffModel
from anomaly_diff.utils.io import atomic_write_bytes

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "deco_diff_reference" / "unet.pt.xz"
PRESETS = ("XS", "S", "M", "L", "XL")
SEED = 0

# The fixture's reference UNet: create_unet_model of models.py, made small (2 levels, 1 res block, attention at
# both, context 32, 3 classes, 8 x 8 latents). GroupNorm has 32 groups in the LDM code, so 32 channels at least.
FIXTURE_UNET = {
    "image_size": 8,
    "in_channels": 4,
    "model_channels": 32,
    "out_channels": 4,
    "num_heads": 2,
    "num_res_blocks": 1,
    "dropout": 0.4,
    "attention_resolutions": [1, 2],
    "channel_mult": [1, 2],
    "num_head_channels": 16,
    "use_spatial_transformer": True,
    "ncls": 3,
    "transformer_depth": 1,
    "context_dim": 32,
}

@torch.no_grad()
def randomize_(module: nn.Module, seed: int) -> None:
    """Give every tensor of ``module``'s state dict random values: random signs times ``1/sqrt(fan_in)`` (matrices,
    kernels, embeddings) or 0.5 (vectors: norms, biases).

    The LDM zero-initialises several convolutions, so default weights would leave parts of a conversion untested.
    Two values per tensor keep the compressed fixture small (about one bit per parameter).
    """
    generator = torch.Generator().manual_seed(seed)
    for tensor in module.state_dict().values():
        scale = tensor[0].numel() ** -0.5 if tensor.ndim > 1 else 0.5
        signs = torch.randint(0, 2, tensor.shape, generator=generator).mul_(2).sub_(1)
        tensor.copy_(signs * scale)


def _inputs(batch: int, size: int, num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Latents ``(batch, 4, size, size)``, timesteps in [0, 10) and class indices, from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, size, size, generator=generator)
    t = torch.randint(0, 10, (batch,), generator=generator)
    return x, t, torch.randint(0, num_classes, (batch,), generator=generator)


def _heads(module: nn.Module) -> str:
    """Attention heads per level, e.g. ``12/24/49`` (the reference's and diffusers' modules both have ``heads``)."""
    return "/".join(str(h) for h in sorted({m.heads for name, m in module.named_modules() if name.endswith("attn1")}))


def _parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def unet_parity_rows(reference_dir: str | Path = DEFAULT_REFERENCE) -> list[dict]:
    """One row per preset: parameters and attention heads of both UNets, and the largest output difference."""
    rows = []
    with reference_code(reference_dir, "models") as code:
        for name in PRESETS:
            reference = code.models.UNET_models[f"UNet_{name}"](latent_size=32, ncls=15).eval()
            randomize_(reference, SEED)
            ours = DeCoDiffModel(nn.Identity(), num_classes=15, unet=name).eval()
            converted = convert_reference_state_dict(reference.state_dict(), ours)
            # the converter covers the UNet and the class embedding; the model's other tensors are not its business
            assert not ours.load_state_dict(converted, strict=False).unexpected_keys
            x, t, class_index = _inputs(2, 32, 15, SEED)
            expected = reference(x, t, context=class_index[:, None])
            diff = (ours(x, t, class_index) - expected).abs().max().item()
            rows.append(
                {
                    "preset": name,
                    "reference": f"UNet_{name}",
                    "parameters_reference": _parameters(reference),
                    "parameters_ours": _parameters(ours.unet) + _parameters(ours.class_embedding),
                    "heads_reference": _heads(reference),
                    "heads_ours": _heads(ours.unet),
                    "max_abs_diff": diff,
                    "output_max_abs": expected.abs().max().item(),
                }
            )
            print(f"{name}: max |diff| {diff:.2e}", file=sys.stderr)
            del reference, ours, converted, expected  # XL is 612M parameters: one preset in memory at a time
            gc.collect()
    return rows


def markdown_table(rows: list[dict]) -> str:
    """The rows of :func:`unet_parity_rows` as a markdown table."""
    lines = [
        "| preset | parameters (reference) | parameters (ours) | heads per level | max abs diff | max abs output |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for row in rows:
        heads = row["heads_ours"] if row["heads_ours"] == row["heads_reference"] else "differ"
        lines.append(
            f"| {row['preset']} | {row['parameters_reference']:,} | {row['parameters_ours']:,} | {heads} "
            f"| {row['max_abs_diff']:.1e} | {row['output_max_abs']:.2f} |"
        )
    return "\n".join(lines)


@torch.no_grad()
def write_fixture(reference_dir: str | Path = DEFAULT_REFERENCE, path: Path = FIXTURE) -> Path:
    """Write the test fixture: the small reference UNet's state dict, inputs and outputs, LZMA-compressed."""
    with reference_code(reference_dir):
        from ldm.modules.diffusionmodules.openaimodel import UNetModel

        reference = UNetModel(**FIXTURE_UNET).eval()
    randomize_(reference, SEED)
    x, t, class_index = _inputs(3, 8, 3, SEED)
    # two context tokens reach attn2's query and key weights, which one token's softmax (always 1) ignores
    context_index = torch.stack([class_index, class_index.roll(1)], dim=1)
    fixture = {
        "unet_kwargs": FIXTURE_UNET,
        "state_dict": reference.state_dict(),
        "x": x,
        "t": t,
        "class_index": class_index,
        "output": reference(x, t, context=class_index[:, None]),
        "context_index": context_index,
        "output_two_tokens": reference(x, t, context=context_index),
    }
    buffer = io.BytesIO()
    torch.save(fixture, buffer)
    return atomic_write_bytes(path, lzma.compress(buffer.getvalue(), preset=9 | lzma.PRESET_EXTREME))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0])
    parser.add_argument("--reference", default=DEFAULT_REFERENCE, help="directory of a DeCo-Diff checkout")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--write-fixture", action="store_true", help=f"regenerate {FIXTURE.relative_to(REPO)}")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.write_fixture:
        path = write_fixture(args.reference)
        print(f"wrote {path.relative_to(REPO)} ({path.stat().st_size / 1024:.0f} KiB)")
        return
    print(markdown_table(unet_parity_rows(args.reference)))


if __name__ == "__main__":
    main()
