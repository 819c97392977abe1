"""Inpainting with an epsilon-prediction diffusion model: disjoint mask sets and a short RePaint-style sampler.

DRDC (Zhan et al., "Enhancing Multi-Class Anomaly Detection via Diffusion Refinement with Dual Conditioning")
poses the refinement as inpainting: every pixel is hidden in exactly one of ``n_s`` mask sets and regenerated
from the context the other pixels give, so the output cannot copy the input ("identical shortcut"). Only ``n_t``
selected timesteps are run, starting at timestep ``t_{n_t}``. The paper's code is not public; the choices below
are this project's (see ``anomaly_diff/models/drdc/README.md``):

- Mask sets tile the image with ``patch_size`` squares. ``"interleaved"`` assigns square ``(i, j)`` to set
  ``(i * q + j) mod n_s`` with ``q = max(1, round(sqrt(n_s)))``: a checkerboard for ``n_s = 2``, and for
  ``n_s = 4`` or ``9`` every square's eight neighbours lie in other sets, so each hidden square is surrounded by
  known context. ``"random"`` is a seeded balanced random assignment.
- The sampler re-imposes the known region at every step (Lugmayr et al., "RePaint", CVPR 2022, Eq. 8: known
  pixels are the input diffused to the current step with fresh noise), and moves the hidden region with the
  deterministic DDIM update (Song et al., "Denoising Diffusion Implicit Models", ICLR 2021, Eq. 12 with
  ``eta = 0``), which jumps between non-adjacent timesteps. diffusers' ``RePaintScheduler`` always starts at the
  last training timestep and ``DDIMScheduler.step`` only steps over evenly spaced sets that end at 0, neither of
  which is a short sweep from ``t_{n_t}``, so the two updates are written here from the schedule's
  ``alphas_cumprod``.
- The hidden region starts either from the input diffused to ``t_{n_t}`` (``"noised_input"``, as SDEdit starts;
  the natural state of a sweep that does not begin at pure noise) or from pure Gaussian noise (``"noise"``, as
  RePaint's full sweep does).
"""

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor

from anomaly_diff.diffusion.schedule import NoiseSchedule

MaskLayout = Literal["interleaved", "random"]
InpaintInit = Literal["noised_input", "noise"]

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

    The image is tiled with ``patch_size`` squares from the top-left corner (the last row and column of squares
    are cut at the border when the size does not divide the image).

    Args:
        height: Image height H in pixels.
        width: Image width W in pixels.
        num_sets: The number of sets ``n_s``.
        patch_size: Side of the squares in pixels.
        layout: ``"interleaved"`` (the lattice of the module docstring) or ``"random"``.
        generator: Random generator of the ``"random"`` layout; ``None`` uses torch's global one.

    Returns:
        ``(n_s, 1, H, W)`` float32, 1 where the set hides the pixel; the sum over sets is 1 everywhere.

    Raises:
        ValueError: A size is below 1, ``layout`` is unknown, or a set would be empty (more sets than squares).
    """
    if min(height, width, num_sets, patch_size) < 1:
        raise ValueError(
            f"mask sets need height, width, num_sets and patch_size >= 1, got {height}, {width}, {num_sets}, "
            f"{patch_size}"
        )
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
        raise ValueError(
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
        raise ValueError(f"n_t={count} timesteps need 1 <= n_t <= t_start={start} (distinct integer timesteps)")
    return [round(start * k / count) for k in range(count, 0, -1)]


def repaint(
    predict: NoisePredictor,
    known: Tensor,
    mask: Tensor,
    class_index: Tensor,
    schedule: NoiseSchedule,
    timesteps: Sequence[int],
    init: InpaintInit = "noised_input",
) -> Tensor:
    """Regenerate the masked region of each sample over the given timesteps, re-imposing the known region.

    At each timestep ``t`` (decreasing): ``eps = predict(x_t)``, ``x0_hat = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)``
    clipped to ``[-1, 1]`` (and ``eps`` recomputed from the clipped ``x0_hat``, as diffusers' DDIM does); then
    ``x_{t'} = mask * (sqrt(a_t') x0_hat + sqrt(1 - a_t') eps) + (1 - mask) * (sqrt(a_t') known + sqrt(1 - a_t') n)``
    with fresh noise ``n`` for the next timestep ``t'``.

    Args:
        predict: The noise predictor.
        known: ``(N, C, H, W)`` images in ``[-1, 1]``.
        mask: ``(N, 1, H, W)`` or ``(N, C, H, W)`` in ``{0, 1}``; 1 = regenerate, 0 = known.
        class_index: ``(N,)`` class of each sample, handed to ``predict``.
        schedule: The noise schedule the predictor was trained with.
        timesteps: Decreasing timesteps in ``[0, T)``, e.g. from :func:`select_timesteps`.
        init: How the masked region starts (module docstring).

    Returns:
        ``(n_t, N, C, H, W)``: after each timestep, the inpainted image ``mask * x0_hat + (1 - mask) * known``
        (the known region is the input, unchanged).

    Raises:
        ValueError: ``timesteps`` is empty, not strictly decreasing or outside ``[0, T)``, or ``init`` is unknown.
    """
    steps = [int(t) for t in timesteps]
    if not steps or any(a <= b for a, b in zip(steps, steps[1:], strict=False)):
        raise ValueError(f"timesteps {steps} must be a non-empty, strictly decreasing list")
    if steps[-1] < 0 or steps[0] >= schedule.num_timesteps:
        raise ValueError(f"timesteps {steps} must lie in [0, {schedule.num_timesteps}) for this schedule")
    if init not in ("noised_input", "noise"):
        raise ValueError(f"unknown inpainting init {init!r}: use 'noised_input' or 'noise'")

    def at(step: int) -> Tensor:
        return torch.full((known.shape[0],), step, dtype=torch.long, device=known.device)

    def diffuse(x0: Tensor, eps: Tensor, step: int) -> Tensor:
        return schedule.signal_rate(at(step), x0.ndim) * x0 + schedule.noise_rate(at(step), x0.ndim) * eps

    x = diffuse(known, torch.randn_like(known), steps[0])
    if init == "noise":
        x = torch.where(mask.bool(), torch.randn_like(known), x)
    outputs = []
    for index, step in enumerate(steps):
        signal, sigma = schedule.signal_rate(at(step), x.ndim), schedule.noise_rate(at(step), x.ndim)
        eps = predict(x, at(step), class_index)
        x0_hat = ((x - sigma * eps) / signal).clamp(-1.0, 1.0)
        outputs.append(mask * x0_hat + (1.0 - mask) * known)
        if index + 1 < len(steps):
            eps = (x - signal * x0_hat) / sigma
            following = steps[index + 1]
            known_t = diffuse(known, torch.randn_like(known), following)
            x = mask * diffuse(x0_hat, eps, following) + (1.0 - mask) * known_t
    return torch.stack(outputs)


def inpaint_disjoint(
    predict: NoisePredictor,
    image: Tensor,
    mask_sets: Tensor,
    class_index: Tensor,
    schedule: NoiseSchedule,
    timesteps: Sequence[int],
    init: InpaintInit = "noised_input",
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

    Returns:
        ``(n_t, B, C, H, W)`` the assembled inpainting after each timestep.
    """
    num_sets, batch = mask_sets.shape[0], image.shape[0]
    known = image.repeat(num_sets, 1, 1, 1)
    masks = mask_sets.to(image).repeat_interleave(batch, dim=0)
    inpainted = repaint(predict, known, masks, class_index.repeat(num_sets), schedule, timesteps, init)
    inpainted = inpainted.unflatten(1, (num_sets, batch))
    return (inpainted * mask_sets.to(image)[None, :, None]).sum(dim=1)
