"""DeCo-Diff's deviation formulation: masked forward corruption, deviation target, deterministic correction.

Equations from Beizaee et al., "Correcting Deviations from Normality: A Reformulated Diffusion Model for
Multi-Class Unsupervised Anomaly Detection" (CVPR 2025), with ``M`` = 1 on clean cells, 0 on corrupted ones:

- forward: ``x_t = M * x0 + (1 - M) * (sqrt(a_t) * x0 + sqrt(1 - a_t) * e)``
- target:  ``d = (1 - M) * (e - (1 - sqrt(a_t)) / sqrt(1 - a_t) * x0)``, so ``x_t - sqrt(1 - a_t) * d = x0``
- step:    ``x0_hat = x_t - sqrt(1 - a_t) * d_hat``; ``x_next = x0_hat + sqrt(1 - a_next) * d_hat``

The step is no diffusers prediction type, so it is written here from the schedule's ``alphas_cumprod``.
"""

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from anomaly_diff.diffusion.schedule import NoiseSchedule, check_chain

DeviationPredictor = Callable[[Tensor, Tensor], Tensor]
"""``predict(x_t (B, C, H, W), timesteps (B,)) -> d_hat (B, C, H, W)``."""


def corrupt(x0: Tensor, noise: Tensor, keep: Tensor, schedule: NoiseSchedule, timesteps: Tensor) -> Tensor:
    """Corrupt the cells where ``keep`` is 0 by the forward diffusion to step ``t``; keep the others clean.

    Args:
        x0: ``(B, C, H, W)`` clean latents.
        noise: ``(B, C, H, W)`` noise ``e``.
        keep: ``(B, 1, H, W)`` or ``(B, C, H, W)`` mask ``M``, 1 = clean, 0 = corrupted.
        schedule: The noise schedule.
        timesteps: ``(B,)`` int64 timesteps.

    Returns:
        ``(B, C, H, W)`` corrupted latents ``x_t``.
    """
    diffused = schedule.signal_rate(timesteps, x0.ndim) * x0 + schedule.noise_rate(timesteps, x0.ndim) * noise
    return keep * x0 + (1.0 - keep) * diffused


def deviation_target(x0: Tensor, noise: Tensor, keep: Tensor, schedule: NoiseSchedule, timesteps: Tensor) -> Tensor:
    """The deviation ``d`` that maps ``x_t`` back to ``x0``: ``x0 = x_t - sqrt(1 - a_t) * d``.

    Args:
        x0: ``(B, C, H, W)`` clean latents.
        noise: ``(B, C, H, W)`` noise ``e``.
        keep: ``(B, 1, H, W)`` or ``(B, C, H, W)`` mask ``M``, 1 = clean, 0 = corrupted.
        schedule: The noise schedule.
        timesteps: ``(B,)`` int64 timesteps.

    Returns:
        ``(B, C, H, W)`` target, exactly 0 on clean cells.
    """
    signal = schedule.signal_rate(timesteps, x0.ndim)
    sigma = schedule.noise_rate(timesteps, x0.ndim)
    return (1.0 - keep) * (noise - (1.0 - signal) / sigma * x0)


def correct_deviations(
    predict: DeviationPredictor, x: Tensor, schedule: NoiseSchedule, timesteps: Sequence[int]
) -> Tensor:
    """Run the deterministic deviation-correction chain over ``timesteps``, starting from ``x`` itself.

    No noise is added: ``x`` is taken as ``x_{timesteps[0]}``; each step applies the module's ``step`` with
    ``a_next`` of the chain's next timestep, and the last returns ``x0_hat`` (the reference's
    ``ddim_deviation_sample`` on its respaced process, :func:`~anomaly_diff.diffusion.schedule.respaced_timesteps`).

    Args:
        predict: The deviation predictor (the class condition bound in).
        x: ``(B, C, H, W)`` encoded latents of the test images.
        schedule: The noise schedule the predictor was trained with.
        timesteps: The chain, strictly decreasing timesteps in ``[0, T)``.

    Returns:
        ``(B, C, H, W)`` the corrected latents ``x0_hat`` after the chain's last step.

    Raises:
        ValueError: ``timesteps`` is empty, not strictly decreasing, or outside ``[0, T)``.
    """
    chain = check_chain(timesteps, schedule.num_timesteps)
    for step, following in zip(chain, [*chain[1:], None], strict=True):
        current = _full(x, step)
        deviation = predict(x, current)
        x0_hat = x - schedule.noise_rate(current, x.ndim) * deviation
        x = x0_hat if following is None else x0_hat + schedule.noise_rate(_full(x, following), x.ndim) * deviation
    return x


def _full(x: Tensor, timestep: int) -> Tensor:
    """``(B,)`` int64 timesteps, all ``timestep``, on ``x``'s device."""
    return torch.full((x.shape[0],), timestep, dtype=torch.long, device=x.device)
