"""Box (mean) filtering and the high-pass residual it defines, batched on the tensors' device.

Neither torch, torchvision nor scikit-image offers a batched GPU box filter (torchvision's only blur is
Gaussian, scikit-image and scipy work per image on the CPU); ``F.avg_pool2d`` with stride 1 is one, once the
border is padded. Reflection padding keeps flat regions flat up to the border, so a constant image has a zero
high-pass everywhere.
"""

import torch.nn.functional as F
from torch import Tensor

from anomaly_diff.errors import ConfigError


def mean_filter(maps: Tensor, size: int) -> Tensor:
    """Average every pixel over the ``size x size`` window around it (reflection-padded border).

    For an even ``size`` the window reaches one pixel further up and left than down and right.

    Args:
        maps: ``(B, C, H, W)`` maps.
        size: Window side in pixels; ``1`` returns the maps unchanged.

    Returns:
        ``(B, C, H, W)`` filtered maps.

    Raises:
        ValueError: ``size`` is below 1, or the padding ``size // 2`` is not smaller than ``H`` and ``W``
            (reflection needs it).
    """
    if size < 1:
        raise ConfigError(f"mean filter size must be >= 1, got {size}")
    if size == 1:
        return maps
    before, after = size // 2, (size - 1) // 2
    height, width = maps.shape[-2:]
    if before >= min(height, width):
        raise ConfigError(f"mean filter size {size} is too large for {height}x{width} maps (needs size // 2 < side)")
    padded = F.pad(maps, (before, after, before, after), mode="reflect")
    return F.avg_pool2d(padded, kernel_size=size, stride=1)


def high_pass(maps: Tensor, size: int) -> Tensor:
    """The detail a mean filter of side ``size`` removes: ``maps - mean_filter(maps, size)``.

    Args:
        maps: ``(B, C, H, W)`` maps.
        size: Window side of the mean filter in pixels.

    Returns:
        ``(B, C, H, W)`` high-pass maps (zero wherever the maps are locally constant).
    """
    return maps - mean_filter(maps, size)
