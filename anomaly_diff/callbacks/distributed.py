"""Collecting what each process kept: the callbacks' one path from per-rank samples to whole-data-set results."""

from typing import TypeVar

import torch.distributed
from lightning.pytorch import Trainer

T = TypeVar("T")


def gather_objects(trainer: Trainer, local: T) -> list[T]:
    """Every process's ``local`` object, in rank order; ``[local]`` in a single process.

    A collective call under DDP: every process must make it. ``torch.distributed.all_gather_object`` is used
    (Lightning's ``all_gather`` moves tensors only, of one shape on every rank); it pickles, so ``local`` should
    be small (scores, a few kept pictures), not a whole test set.
    """
    if trainer.world_size == 1 or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [local]
    gathered: list = [None] * trainer.world_size
    torch.distributed.all_gather_object(gathered, local)
    return gathered
