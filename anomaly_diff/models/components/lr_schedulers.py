"""Learning-rate schedules whose length is the run's, set from a LightningCLI config.

``WarmupCosineLR`` is the schedule of the DeCo-Diff reference (transformers' ``get_cosine_schedule_with_warmup``,
also ``diffusers.optimization.get_cosine_schedule_with_warmup``): linear warm-up from 0, then a half cosine.
Those functions need the number of training steps when the optimiser is built, which a config cannot know (it
depends on the data set size, batch size, devices and accumulation). This class takes the warm-up and the cosine
length as fractions of the run instead, and :meth:`AnomalyModule.configure_optimizers
<anomaly_diff.models.base.AnomalyModule.configure_optimizers>` gives it the run's optimiser steps
(``trainer.estimated_stepping_batches``).
"""

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from anomaly_diff.errors import ConfigError


class WarmupCosineLR(LambdaLR):
    """Linear warm-up, then cosine decay, in optimiser steps.

    The factor on the base learning rate at step ``s`` is ``s / W`` during warm-up, then
    ``max(0, 0.5 * (1 + cos(pi * (s - W) / (L - W))))`` with ``W = round(warmup_fraction * total_steps)`` and
    ``L = cosine_length * total_steps``.

    Args:
        optimizer: The optimiser.
        warmup_fraction: Warm-up length as a fraction of the run. Defaults to ``0.0125`` (DeCo-Diff: 10 of 800
            epochs).
        cosine_length: Where the cosine reaches 0, in multiples of the run. ``1.0`` decays to 0 at the end; the
            DeCo-Diff reference uses ``1.5`` (1200 "steps" for 800 epochs), ending at a quarter of the peak.
            Defaults to ``1.5``.
        total_steps: Optimiser steps of the run; ``None`` leaves it to ``configure_optimizers``, which sets it from
            the trainer before the first step.
        last_epoch: The index of the last step when resuming. Defaults to ``-1``.

    Example:
        >>> import torch
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        >>> sched = WarmupCosineLR(opt, warmup_fraction=0.1, cosine_length=1.0, total_steps=100)
        >>> [round(sched.lr_lambdas[0](s), 3) for s in (0, 5, 10, 55, 100)]
        [0.0, 0.5, 1.0, 0.5, 0.0]
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_fraction: float = 0.0125,
        cosine_length: float = 1.5,
        total_steps: int | None = None,
        last_epoch: int = -1,
    ) -> None:
        if not 0 <= warmup_fraction < 1:
            raise ConfigError(f"warmup_fraction must lie in [0, 1), got {warmup_fraction}")
        if cosine_length <= 0:
            raise ConfigError(f"cosine_length must be > 0 (a multiple of the run), got {cosine_length}")
        self.warmup_fraction = warmup_fraction
        self.cosine_length = cosine_length
        self.total_steps = None
        if total_steps is not None:
            self.set_total_steps(total_steps)
        super().__init__(optimizer, self._factor, last_epoch)

    def set_total_steps(self, total_steps: int | float) -> None:
        """Set the run's number of optimiser steps.

        Raises:
            ConfigError: ``total_steps`` is not a positive finite number (e.g. a run without ``max_epochs`` or
                ``max_steps``).
        """
        if not math.isfinite(total_steps) or total_steps < 1:
            raise ConfigError(
                f"WarmupCosineLR needs a finite number of training steps, got {total_steps}: set trainer.max_epochs "
                "or trainer.max_steps, or give the scheduler's total_steps"
            )
        self.total_steps = int(total_steps)

    def _factor(self, step: int) -> float:
        if self.total_steps is None:
            if step == 0:  # LambdaLR evaluates step 0 on construction; its factor does not depend on the length
                return 0.0 if self.warmup_fraction > 0 else 1.0
            raise RuntimeError("WarmupCosineLR stepped before set_total_steps(): give total_steps or call it first")
        warmup = round(self.warmup_fraction * self.total_steps)
        if step < warmup:
            return step / warmup
        progress = (step - warmup) / max(1.0, self.cosine_length * self.total_steps - warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
