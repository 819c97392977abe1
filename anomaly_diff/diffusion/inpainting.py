"""Inpainting with an epsilon-prediction diffusion model: disjoint mask sets and a short RePaint-style sampler.

DRDC's refinement (Zhan et al., "Enhancing Multi-Class Anomaly Detection via Diffusion Refinement with Dual
Conditioning"): every pixel is hidden in exactly one of ``n_s`` mask sets and regenerated from the others' context
over ``n_t`` timesteps from ``t_{n_t}``. Known region re-imposed at every step: Lugmayr et al., "RePaint", CVPR 2022,
Eq. 8 (resampling: Alg. 1); hidden region moved by DDIM, Song et al., ICLR 2021, Eq. 12 with ``eta = 0``.
``InpaintInit``: ``"context"`` (:func:`context_fill` diffused to ``t_{n_t}``) and ``"noise"`` never let a hidden
pixel's own value reach its regeneration; ``"noised_input"`` (SDEdit, Meng et al., ICLR 2022) does, and is not
inpainting. Rationale: ``anomaly_diff/models/drdc/README.md``, section "Choices".
"""

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from anomaly_diff.diffusion.schedule import NoiseSchedule
from anomaly_diff.errors import ConfigError

MaskLayout = Literal["interleaved", "random"]
InpaintInit = Literal["context", "noise", "noised_input"]
INPAINT_INITS = ("context", "noise", "noised_input")

NoisePredictor = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``predict(x_t (N, C, H, W), timesteps (N,), class_index (N,)) -> epsilon_hat (N, C, H, W)``."""


def disjoint_mask_sets(
    height: int,
    width: int,
    num_sets: int,
    patch_size: int,
    layout: MaskLayout = "interleaved",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Split an image into ``num_sets`` disjoint masks of square patches that together cover every pixel once.

    The image is tiled with ``patch_size`` squares from the top-left corner (cut at the border when the size does not
    divide the image). ``"interleaved"`` assigns square ``(i, j)`` to set ``(i * q + j) mod n_s``,
    ``q = max(1, round(sqrt(n_s)))``, so for ``n_s = 4`` or ``9`` every hidden square is surrounded by known ones.

    Args:
        height: Image height H in pixels.
        width: Image width W in pixels.
        num_sets: The number of sets ``n_s``, at least 1 (``InpaintingConfig`` checks it, naming its key).
        patch_size: Side of the squares in pixels, at least 1 (checked there too).
        layout: ``"interleaved"`` or ``"random"`` (a seeded balanced assignment).
        generator: Random generator of the ``"random"`` layout; ``None`` uses torch's global one.

    Returns:
        ``(n_s, 1, H, W)`` float32, 1 where the set hides the pixel; the sum over sets is 1 everywhere.

    Raises:
        ValueError: ``layout`` is unknown.
        ConfigError: A set would be empty (more sets than squares).
    """
    rows, cols = math.ceil(height / patch_size), math.ceil(width / patch_size)
    if layout == "interleaved":
        step = max(1, round(math.sqrt(num_sets)))
        assignment = (torch.arange(rows)[:, None] * step + torch.arange(cols)[None, :]) % num_sets
    elif layout == "random":
        assignment = (torch.randperm(rows * cols, generator=generator) % num_sets).reshape(rows, cols)
    else:
        raise ValueError(f"unknown mask layout {layout!r}: use 'interleaved' or 'random'")
    masks = (assignment[None] == torch.arange(num_sets)[:, None, None]).float()
    empty = (masks.flatten(1).sum(1) == 0).nonzero().flatten().tolist()
    if empty:
        raise ConfigError(
            f"num_sets={num_sets} leaves sets {empty} empty: a {height}x{width} image has only {rows * cols} "
            f"squares of side patch_size={patch_size}; use fewer sets or smaller squares"
        )
    masks = masks.repeat_interleave(patch_size, dim=1).repeat_interleave(patch_size, dim=2)
    return masks[:, None, :height, :width].contiguous()


def select_timesteps(start: int, count: int) -> list[int]:
    """The ``n_t`` timesteps of the short sweep: ``round(start * k / count)`` for ``k = count, ..., 1``.

    Args:
        start: ``t_{n_t}``, the first (noisiest) timestep.
        count: ``n_t``, the number of timesteps; at most ``start`` so that they are distinct.

    Returns:
        Distinct timesteps in decreasing order, the first being ``start`` and the last ``round(start / count)``.

    Raises:
        ValueError: ``count < 1`` or ``count > start``.
    """
    if not 1 <= count <= start:
        raise ConfigError(f"n_t={count} timesteps need 1 <= n_t <= t_start={start} (distinct integer timesteps)")
    return [round(start * k / count) for k in range(count, 0, -1)]


def context_fill(known: Tensor, mask: Tensor) -> Tensor:
    """Fill the hidden pixels from the known ones, layer by layer from the border of the hidden region inward.

    Each pass gives every hidden pixel that touches known (or already filled) pixels the mean of those 3 x 3
    neighbours (batched on the model's device, unlike ``cv2.inpaint``). An image with no known pixel is filled with 0.

    Args:
        known: ``(N, C, H, W)`` images.
        mask: ``(N, 1, H, W)`` or ``(N, C, H, W)`` in ``{0, 1}``; 1 = hidden.

    Returns:
        ``(N, C, H, W)``: the known pixels unchanged, the hidden ones filled.
    """
    reached = ~mask.bool().expand_as(known)
    value = torch.where(reached, known, torch.zeros_like(known))
    for _ in range(max(known.shape[-2:])):
        if reached.all():
            break
        # Sums over the 3 x 3 neighbourhood (avg_pool's common factor 1/9 cancels in the ratio).
        total = F.avg_pool2d(value, 3, stride=1, padding=1)
        count = F.avg_pool2d(reached.to(known.dtype), 3, stride=1, padding=1)
        new = ~reached & (count > 0)
        value = torch.where(new, total / count.clamp_min(1e-12), value)
        reached = reached | new
    return value


def repaint(
    predict: NoisePredictor,
    known: Tensor,
    mask: Tensor,
    class_index: Tensor,
    schedule: NoiseSchedule,
    timesteps: Sequence[int],
    init: InpaintInit = "context",
    resample: int = 1,
) -> Tensor:
    """Regenerate the masked region of each sample over the given timesteps, re-imposing the known region.

    At each timestep ``t`` (decreasing): ``eps = predict(x_t)``, ``x0_hat = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)``
    clipped to ``[-1, 1]`` (and ``eps`` recomputed from the clipped ``x0_hat``, as diffusers' DDIM does); then
    ``x_{t'} = mask * (sqrt(a_t') x0_hat + sqrt(1 - a_t') eps) + (1 - mask) * (sqrt(a_t') known + sqrt(1 - a_t') n)``
    with fresh noise ``n`` for the next timestep ``t'`` (after the last timestep, ``a_t' = 1``: the clean image).
    With ``resample = U > 1``, the step is repeated ``U`` times, ``x_{t'}`` re-noised back to ``t`` in between:
    ``x_t = sqrt(a_t / a_t') x_{t'} + sqrt(1 - a_t / a_t') n`` (RePaint, Alg. 1).

    Args:
        predict: The noise predictor.
        known: ``(N, C, H, W)`` images in ``[-1, 1]``.
        mask: ``(N, 1, H, W)`` or ``(N, C, H, W)`` in ``{0, 1}``; 1 = regenerate, 0 = known.
        class_index: ``(N,)`` class of each sample, handed to ``predict``.
        schedule: The noise schedule the predictor was trained with.
        timesteps: Decreasing timesteps in ``[0, T)``, e.g. from :func:`select_timesteps`.
        init: How the masked region starts (module docstring).
        resample: Repetitions ``U >= 1`` of each step.

    Returns:
        ``(n_t, N, C, H, W)``: after each timestep, the inpainted image ``mask * x0_hat + (1 - mask) * known``
        (the known region is the input, unchanged).

    Raises:
        ValueError: ``timesteps`` is empty, not strictly decreasing or outside ``[0, T)``, ``init`` is unknown or
            ``resample < 1``.
    """
    steps = [int(t) for t in timesteps]
    if not steps or any(a <= b for a, b in zip(steps, steps[1:], strict=False)):
        raise ValueError(f"timesteps {steps} must be a non-empty, strictly decreasing list")
    if steps[-1] < 0 or steps[0] >= schedule.num_timesteps:
        raise ValueError(f"timesteps {steps} must lie in [0, {schedule.num_timesteps}) for this schedule")
    if init not in INPAINT_INITS:
        raise ConfigError(f"unknown inpainting init {init!r}: use one of {list(INPAINT_INITS)}")
    if resample < 1:
        raise ConfigError(f"resample={resample} must be >= 1 (1 = no resampling)")

    def alpha_bar(step: int | None) -> Tensor:
        if step is None:  # after the last timestep: the clean image
            return torch.ones(known.shape[0], *[1] * (known.ndim - 1), device=known.device, dtype=known.dtype)
        return schedule.alpha_bar(torch.full((known.shape[0],), step, device=known.device), known.ndim)

    def diffuse(x0: Tensor, eps: Tensor, step: int | None) -> Tensor:
        a = alpha_bar(step)
        return a.sqrt() * x0 + (1 - a).sqrt() * eps

    if init == "context":
        x = diffuse(mask * context_fill(known, mask) + (1.0 - mask) * known, torch.randn_like(known), steps[0])
    else:
        x = diffuse(known, torch.randn_like(known), steps[0])
        if init == "noise":
            x = torch.where(mask.bool(), torch.randn_like(known), x)
    outputs = []
    for index, step in enumerate(steps):
        following = steps[index + 1] if index + 1 < len(steps) else None
        signal, sigma = alpha_bar(step).sqrt(), (1 - alpha_bar(step)).sqrt()
        at = torch.full((known.shape[0],), step, dtype=torch.long, device=known.device)
        for repeat in range(resample):
            eps = predict(x, at, class_index)
            x0_hat = ((x - sigma * eps) / signal).clamp(-1.0, 1.0)
            last = repeat == resample - 1
            if last:
                outputs.append(mask * x0_hat + (1.0 - mask) * known)
                if following is None:
                    break
            if following is None:  # the clean image, re-noised below
                x = mask * x0_hat + (1.0 - mask) * known
            else:
                eps = (x - signal * x0_hat) / sigma
                x = mask * diffuse(x0_hat, eps, following) + (1.0 - mask) * diffuse(known, torch.randn_like(known),
                                                                                   following)
            if not last:  # jump back from t' to t
                ratio = alpha_bar(step) / alpha_bar(following)
                x = ratio.sqrt() * x + (1 - ratio).sqrt() * torch.randn_like(known)
    return torch.stack(outputs)


def inpaint_disjoint(
    predict: NoisePredictor,
    image: Tensor,
    mask_sets: Tensor,
    class_index: Tensor,
    schedule: NoiseSchedule,
    timesteps: Sequence[int],
    init: InpaintInit = "context",
    resample: int = 1,
) -> Tensor:
    """Inpaint every mask set of every image in one batched sweep and assemble each pixel from its own set.

    The ``n_s`` sets of the ``B`` images run as one batch of ``n_s * B`` samples. Since the sets are disjoint
    and cover the image, pixel ``p`` of the result is the regeneration made while ``p`` was hidden.

    Args:
        predict: The noise predictor.
        image: ``(B, C, H, W)`` images in ``[-1, 1]``.
        mask_sets: ``(n_s, 1, H, W)`` disjoint masks covering the image, from :func:`disjoint_mask_sets`.
        class_index: ``(B,)`` class of each image.
        schedule: The noise schedule the predictor was trained with.
        timesteps: Decreasing timesteps, e.g. from :func:`select_timesteps`.
        init: How the masked regions start (module docstring).
        resample: Repetitions of each step (:func:`repaint`).

    Returns:
        ``(n_t, B, C, H, W)`` the assembled inpainting after each timestep.
    """
    num_sets, batch = mask_sets.shape[0], image.shape[0]
    known = image.repeat(num_sets, 1, 1, 1)
    masks = mask_sets.to(image).repeat_interleave(batch, dim=0)
    inpainted = repaint(predict, known, masks, class_index.repeat(num_sets), schedule, timesteps, init,
                        resample)
    inpainted = inpainted.unflatten(1, (num_sets, batch))
    return (inpainted * mask_sets.to(image)[None, :, None]).sum(dim=1)
