"""Reading images and masks from disk into 8-bit arrays, with errors that name the file.

Conversions (all lossless except where said):

- grayscale (``L``, ``1``), palette (``P``, ``PA``), ``CMYK``, ``YCbCr``, ``LAB``, ``HSV`` → RGB by Pillow;
- ``RGBA``/``LA``/``PA``: the alpha channel is dropped, not composited (colour values are kept as stored);
- 16-bit images: gray ``I;16*`` (and 32-bit ``I`` holding values up to 65535) keep their high byte
  (``value >> 8``), which is what Pillow itself does when it opens a 16-bit RGB PNG as ``RGB``;
- floating-point (``F``) images are refused: their value range is unknown.

Masks are binarised: any value above 0 (in any colour channel; for a palette image, any palette index
other than 0, as VisA's official preparation script does) is foreground.
"""

from pathlib import Path

import numpy as np
from PIL import Image

from anomaly_diff.errors import DatasetError

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_SINGLE_CHANNEL_MODES = ("1", "L", "P", "F", *_SIXTEEN_BIT_MODES)


def _open(path: Path, decode: bool = True) -> Image.Image:
    """Open an image and, with ``decode``, read all its pixels, so that corrupt and truncated files fail here."""
    try:
        with Image.open(path) as image:
            if decode:
                image.load()
            return image
    except FileNotFoundError as error:
        raise DatasetError(f"image file {path} does not exist (it was listed when the data set was indexed)") from error
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as error:
        raise DatasetError(
            f"cannot read image file {path}: {error}. The file is corrupt, truncated or not an image; "
            "replace it with a valid copy or delete it (samples are never skipped)"
        ) from error


def read_size(path: Path) -> tuple[int, int]:
    """Read an image's ``(width, height)`` from its header, without decoding the pixels.

    Raises:
        DatasetError: The file is missing or its header is not an image's.
    """
    return _open(path, decode=False).size


def _sixteen_to_eight_bit(image: Image.Image, path: Path) -> np.ndarray:
    """Keep the high byte of a 16-bit single-channel image: ``(H, W)`` uint8."""
    values = np.asarray(image)
    if values.size and (values.min() < 0 or values.max() > np.iinfo(np.uint16).max):
        raise DatasetError(
            f"image {path} has mode {image.mode} with values in [{values.min()}, {values.max()}], outside the "
            "16-bit range [0, 65535]; save it as an 8-bit or 16-bit image"
        )
    return (values.astype(np.uint32) >> 8).astype(np.uint8)


def load_rgb(path: Path) -> np.ndarray:
    """Read an image as 8-bit RGB (see the module docstring for the conversions).

    Args:
        path: The image file.

    Returns:
        ``(H, W, 3)`` uint8 array.

    Raises:
        DatasetError: The file is missing, corrupt or truncated, or a floating-point image.
    """
    image = _open(path)
    if image.mode in _SIXTEEN_BIT_MODES:
        return np.repeat(_sixteen_to_eight_bit(image, path)[..., None], 3, axis=2)
    if image.mode == "F":
        raise DatasetError(f"image {path} is a floating-point (mode F) image; save it as 8-bit or 16-bit RGB/gray")
    return np.asarray(image.convert("RGB"))


def load_mask(path: Path) -> np.ndarray:
    """Read a ground-truth mask and binarise it (value above 0 → 1).

    Args:
        path: The mask file.

    Returns:
        ``(H, W)`` uint8 array in ``{0, 1}``.

    Raises:
        DatasetError: The file is missing, corrupt or truncated.
    """
    image = _open(path)
    if image.mode in ("LA", "PA"):
        image = image.getchannel(0)
    elif image.mode not in _SINGLE_CHANNEL_MODES:
        image = image.convert("RGB")
    values = np.asarray(image)
    if values.ndim == 3:
        values = values.max(axis=2)
    return (values > 0).astype(np.uint8)
