"""Tiny model artefacts for tests: an 8x-downsampling AutoencoderKL saved the way the CLI loads one."""

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
