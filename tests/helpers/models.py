"""Tiny model artefacts for tests: an 8x-downsampling AutoencoderKL saved the way the CLI loads one, and the
reference-UNet fixture of the DeCo-Diff checkpoint converter."""

import io
import lzma
from pathlib import Path

import torch
from diffusers import AutoencoderKL


def save_tiny_autoencoder(path: Path, seed: int = 0) -> Path:
    """Save a randomly initialised 4-level (8x) ``AutoencoderKL`` with 8 channels per level to ``path``."""
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        norm_num_groups=8,
        latent_channels=4,
        scaling_factor=0.5,
    )
    vae.save_pretrained(path)
    return path


REFERENCE_UNET_FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "deco_diff_reference" / "unet.pt.xz"


def reference_unet_fixture() -> dict:
    """The DeCo-Diff reference UNet fixture (``experiments/reference_unet_parity.py --write-fixture``): its
    reference-layout ``state_dict`` and inputs and outputs (``x``, ``t``, ``class_index``, ``output``, ...)."""
    return torch.load(io.BytesIO(lzma.decompress(REFERENCE_UNET_FIXTURE.read_bytes())), weights_only=True)
