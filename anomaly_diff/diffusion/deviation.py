"""DeCo-Diff's deviation formulation: masked forward corruption, deviation target, deterministic correction.

Equations from Beizaee et al., "Correcting Deviations from Normality: A Reformulated Diffusion Model for
Multi-Class Unsupervised Anomaly Detection" (CVPR 2025), with ``M`` = 1 on clean cells, 0 on corrupted ones:

- forward: ``x_t = M * x0 + (1 - M) * (sqrt(a_t) * x0 + sqrt(1 - a_t) * e)``
- target:  ``d = (1 - M) * (e - (1 - sqrt(a_t)) / sqrt(1 - a_t) * x0)``, so ``x_t - sqrt(1 - a_t) * d = x0``
- step:    ``x0_hat = x_t - sqrt(1 - a_t) * d_hat``; ``x_{t-1} = x0_hat + sqrt(1 - a_{t-1}) * d_hat``

The step is not one of diffusers' prediction types (``epsilon``, ``sample``, ``v_prediction``), so it is
written here from the schedule's ``alphas_cumprod``.
"""

from collections.abc import Callable

import torch
from torch import Tensor

from anomaly_diff.diffusion.schedule import NoiseSchedule

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


def correct_deviations(predict: DeviationPredictor, x: Tensor, schedule: NoiseSchedule, t_start: int) -> Tensor:
    """Run the deterministic deviation-correction chain from ``t_start`` down to 0, starting from ``x`` itself.

    No noise is added: the observed latent is treated as ``x_{t_start}``. The loop runs over timesteps only;
    each step handles the whole batch.

    Args:
        predict: The deviation predictor (the class condition bound in).
        x: ``(B, C, H, W)`` encoded latents of the test images.
        schedule: The noise schedule the predictor was trained with.
        t_start: First timestep index, in ``[0, T)``; the reference's ``--reverse-steps 5`` is ``t_start=4``.

    Returns:
        ``(B, C, H, W)`` the corrected latents ``x0_hat`` after the step at ``t = 0``.

    Raises:
        ValueError: ``t_start`` is outside ``[0, T)``.
    """
    if not 0 <= t_start < schedule.num_timesteps:
        raise ValueError(f"t_start={t_start} must lie in [0, {schedule.num_timesteps}) for this schedule")
    for step in range(t_start, -1, -1):
        timesteps = torch.full((x.shape[0],), step, dtype=torch.long, device=x.device)
        deviation = predict(x, timesteps)
        x0_hat = x - schedule.noise_rate(timesteps, x.ndim) * deviation
        x = x0_hat + schedule.noise_rate(timesteps - 1, x.ndim) * deviation if step > 0 else x0_hat
    return x
