"""Ground-truth regions for AUPRO: the 8-connected components of each mask, labelled per image.

Labelling uses ``scipy.ndimage.label`` (on the CPU); only the numbering across images and the per-pixel overlap
weights are written here.
"""

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def label_regions(mask: Tensor, first_code: int = 1) -> tuple[Tensor, Tensor]:
    """Number the 8-connected anomalous regions of one mask.

    Args:
        mask: ``(H, W)`` ground truth in ``{0, 1}`` (any dtype, any device).
        first_code: The code given to the first region; the others follow consecutively.

    Returns:
        ``(H * W,)`` int32 codes on ``mask``'s device (0 for a normal pixel, ``first_code + i`` for a pixel of the
        ``i``-th region) and the ``(R,)`` int64 pixel count of each region.
    """
    labels, count = ndimage.label(mask.detach().cpu().numpy() > 0, structure=EIGHT_CONNECTED)
    labels = labels.reshape(-1).astype(np.int32, copy=False)
    sizes = torch.from_numpy(np.bincount(labels, minlength=count + 1)[1:].astype(np.int64))
    if first_code != 1:
        labels[labels > 0] += first_code - 1
    return torch.from_numpy(labels).to(mask.device), sizes.to(mask.device)


def overlap_weights(region_sizes: Tensor) -> Tensor:
    """The overlap each positive pixel adds to its region's detected fraction: ``1 / |region|``.

    Args:
        region_sizes: ``(R,)`` pixel count of each region, in code order (code ``i + 1`` for entry ``i``).

    Returns:
        ``(R + 1,)`` float64 weights indexed by region code, with weight 0 for code 0 (normal pixels).
    """
    zero = torch.zeros(1, dtype=torch.float64, device=region_sizes.device)
    return torch.cat([zero, 1.0 / region_sizes.double()])
