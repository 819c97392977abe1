"""A memo of a deterministic per-sample computation (frozen encoder outputs), keyed by each sample's path.

Frozen parts of a model (an autoencoder, a pretrained backbone) give the same output for the same training image in
every epoch when the training transform is deterministic, as in this project's datamodules; computing it once
removes that part of the cost of later epochs. Keys are the image paths the batches carry (``Batch.path``).
"""

from collections.abc import Callable, Sequence

import torch
from torch import Tensor


class SampleCache:
    """Per-path store of ``compute(inputs)`` rows; only the rows of unseen paths are computed.

    Example:
        >>> cache = SampleCache()
        >>> calls = []
        >>> double = lambda x: calls.append(len(x)) or 2 * x
        >>> cache(["a", "b"], torch.tensor([1.0, 2.0]), double).tolist()
        [2.0, 4.0]
        >>> cache(["b", "c"], torch.tensor([2.0, 3.0]), double).tolist(), calls
        ([4.0, 6.0], [2, 1])
    """

    def __init__(self) -> None:
        self._store: dict[str, Tensor] = {}

    def __len__(self) -> int:
        """The number of cached samples."""
        return len(self._store)

    def __call__(self, keys: Sequence[str], inputs: Tensor, compute: Callable[[Tensor], Tensor]) -> Tensor:
        """Return ``compute(inputs)``, computing only the rows whose key is not cached yet.

        Args:
            keys: One key (image path) per row of ``inputs``.
            inputs: ``(B, ...)`` inputs.
            compute: A deterministic function of a batch of rows, ``(N, ...) -> (N, ...)``.

        Returns:
            ``(B, ...)`` outputs, in the order of ``keys``.
        """
        missing = [index for index, key in enumerate(keys) if key not in self._store]
        if missing:
            computed = compute(inputs[missing])
            self._store.update(zip([keys[index] for index in missing], computed, strict=True))
        return torch.stack([self._store[key] for key in keys])
