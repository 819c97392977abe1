"""The latent autoencoder of latent-diffusion models: loading it (hub id or local folder) and using it frozen."""

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from torch import Tensor, nn

from anomaly_diff.errors import MissingFileError
from anomaly_diff.models.components.feature_autoencoder import FeatureAutoencoder

Codec = AutoencoderKL | FeatureAutoencoder
"""The autoencoders a :class:`LatentCodec` wraps: diffusers' KL autoencoder or this project's pretrained-encoder one."""

_OFFLINE_HELP = (
    "To work offline, either copy a pretrained autoencoder to a local folder (on a machine with internet: "
    "`AutoencoderKL.from_pretrained('stabilityai/sd-vae-ft-ema').save_pretrained('FOLDER')`) and pass that folder, "
    "or train this project's own: `anomaly-diff fit --config configs/autoencoder/<dataset>.yaml`, which writes one."
)


def load_autoencoder(source: str | Path) -> Codec:
    """Load an autoencoder from a local ``save_pretrained`` folder or a Hugging Face hub id.

    A local folder may hold a diffusers ``AutoencoderKL`` or a
    :class:`~anomaly_diff.models.components.feature_autoencoder.FeatureAutoencoder` (its ``config.json`` names
    the class); a hub id is an ``AutoencoderKL``.

    Args:
        source: A folder holding ``config.json`` and the weights, or a hub id such as ``"stabilityai/sd-vae-ft-ema"``.
            Anything that starts with ``/``, ``.`` or ``~`` is taken as a local path.

    Returns:
        The autoencoder, in eval mode.

    Raises:
        MissingFileError: The folder does not exist or holds no autoencoder, or the hub cannot be reached;
            the message says how to provide the weights offline.
    """
    text = str(source)
    path = Path(text).expanduser()
    if path.exists() or text.startswith(("/", ".", "~")):
        if not (path / "config.json").is_file():
            raise MissingFileError(f"no autoencoder at {path}: expected a save_pretrained folder with config.json. "
                                   + _OFFLINE_HELP)
        class_name = json.loads((path / "config.json").read_text(encoding="utf-8")).get("_class_name")
        model_class = FeatureAutoencoder if class_name == FeatureAutoencoder.__name__ else AutoencoderKL
        return model_class.from_pretrained(path).eval()
    try:
        return AutoencoderKL.from_pretrained(text).eval()
    except (OSError, ValueError) as error:
        raise MissingFileError(f"could not load the autoencoder {text!r} from the Hugging Face hub ({error}). "
                               + _OFFLINE_HELP) from error


def autoencoder_architecture(vae: Codec) -> dict:
    """The autoencoder's diffusers config with its class name, as plain values: what rebuilds it without weights."""
    config = {key: list(value) if isinstance(value, tuple) else value for key, value in vae.config.items()
              if not key.startswith("_")}
    return {"_class_name": type(vae).__name__, **config}


def autoencoder_from_architecture(architecture: dict) -> Codec:
    """An autoencoder of that architecture (:func:`autoencoder_architecture`) whose weights a state dict fills.

    Nothing is downloaded or read from disk, so a checkpoint that holds the architecture and the weights loads
    anywhere.
    """
    config = {key: value for key, value in architecture.items() if key != "_class_name"}
    feature = architecture.get("_class_name") == FeatureAutoencoder.__name__
    return (FeatureAutoencoder if feature else AutoencoderKL).from_config(config).eval()


class LatentCodec(nn.Module):
    """A frozen autoencoder that maps images in ``[0, 1]`` to scaled latents and back.

    For an ``AutoencoderKL`` the encoder's posterior mean is used (no sampling), scaled by
    ``vae.config.scaling_factor`` as in latent diffusion (0.18215 for Stable Diffusion's VAE); a
    ``FeatureAutoencoder`` is deterministic and standardises its latents itself (scaling factor 1). The
    autoencoder always runs in float32, also under mixed precision: its decoder overflows in float16.

    Args:
        source: A hub id or local folder (see :func:`load_autoencoder`), or an autoencoder instance.

    Example:
        >>> codec = LatentCodec(AutoencoderKL(block_out_channels=(8, 16), latent_channels=4, norm_num_groups=8))
        >>> codec.encode(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 4, 16, 16])
    """

    def __init__(self, source: str | Path | Codec) -> None:
        super().__init__()
        self.vae = source if isinstance(source, Codec) else load_autoencoder(source)
        self.vae.requires_grad_(False)
        self.vae.eval()

    @property
    def scaling_factor(self) -> float:
        """The factor latents are multiplied by after encoding."""
        return float(self.vae.config.scaling_factor)

    @property
    def downsampling(self) -> int:
        """How many pixels one latent cell spans along each side."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        """Channels of the latents."""
        if isinstance(self.vae, FeatureAutoencoder):
            return self.vae.num_latent_channels
        return int(self.vae.config.latent_channels)

    def train(self, mode: bool = True) -> "LatentCodec":
        """Keep the frozen autoencoder in eval mode whatever the parent module does."""
        super().train(mode)
        self.vae.eval()
        return self

    @torch.no_grad()
    def encode(self, image: Tensor) -> Tensor:
        """Encode ``(B, 3, H, W)`` images in ``[0, 1]`` to ``(B, C, H/f, W/f)`` scaled latents."""
        with torch.autocast(device_type=image.device.type, enabled=False):
            encoded = self.vae.encode(image.float() * 2 - 1)
            latents = encoded if isinstance(encoded, Tensor) else encoded.latent_dist.mean
            return latents * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents: Tensor, clamp: bool = True) -> Tensor:
        """Decode scaled latents to ``(B, 3, H, W)`` images in ``[0, 1]``.

        With ``clamp=False`` the raw decoder output, which may overshoot, is only mapped from ``[-1, 1]`` by
        ``(x + 1) / 2``.
        """
        with torch.autocast(device_type=latents.device.type, enabled=False):
            decoded = self.vae.decode(latents.float() / self.scaling_factor)
            image = ((decoded if isinstance(decoded, Tensor) else decoded.sample) + 1) / 2
            return image.clamp(0, 1) if clamp else image
