import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.helpers.models import save_tiny_autoencoder


class PoolingCodec(nn.Module):
    """A fixed stand-in for the autoencoder: 8x8 average pooling down, nearest-neighbour upsampling back."""

    def encode(self, image):
        return F.avg_pool2d(image, 8)

    def decode(self, latents, clamp=True):
        return F.interpolate(latents, scale_factor=8, mode="nearest")


@pytest.fixture
def pooling_codec():
    return PoolingCodec()


@pytest.fixture(scope="session")
def tiny_autoencoder_dir(tmp_path_factory):
    """A randomly initialised 8x-downsampling AutoencoderKL saved with save_pretrained, as the CLI would load it."""
    return save_tiny_autoencoder(tmp_path_factory.mktemp("autoencoder"))


def _make_batch(categories, size=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    n = len(categories)
    return {
        "image": torch.rand(n, 3, size, size, generator=generator),
        "mask": torch.zeros(n, size, size),
        "label": torch.zeros(n, dtype=torch.long),
        "category": list(categories),
        "path": [f"{i}.png" for i in range(n)],
        "index": torch.arange(n),
    }


@pytest.fixture
def make_batch():
    """Build a batch in the data contract's layout from category names (random images, no defects)."""
    return _make_batch
