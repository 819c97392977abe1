"""The noise schedule a_t (cumulative signal rate) of a diffusers scheduler, and the reference's timestep respacing."""

from collections.abc import Sequence

import torch
from diffusers import DDIMScheduler
from torch import Tensor, nn

from anomaly_diff.errors import ConfigError


class NoiseSchedule(nn.Module):
    """Cumulative products ``a_t = prod_{s<=t} (1 - beta_s)`` of a diffusers noise schedule.

    Taken from :class:`diffusers.DDIMScheduler`; a non-persistent buffer (follows the model's device, not saved).

    Args:
        num_train_timesteps: Number of diffusion timesteps T. Defaults to ``10`` (DeCo-Diff).
        beta_schedule: A diffusers beta schedule name (``"linear"``, ``"scaled_linear"``,
            ``"squaredcos_cap_v2"``). Defaults to ``"squaredcos_cap_v2"`` (DeCo-Diff).

    Example:
        >>> schedule = NoiseSchedule(10, "squaredcos_cap_v2")
        >>> schedule.signal_rate(torch.tensor([0, 9])).shape
        torch.Size([2, 1, 1, 1])
    """

    alphas_cumprod: Tensor

    def __init__(self, num_train_timesteps: int = 10, beta_schedule: str = "squaredcos_cap_v2") -> None:
        super().__init__()
        if num_train_timesteps < 1:
            raise ConfigError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}")
        scheduler = DDIMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule)
        self.register_buffer("alphas_cumprod", scheduler.alphas_cumprod.float().clone(), persistent=False)

    @property
    def num_timesteps(self) -> int:
        """The number of diffusion timesteps T."""
        return self.alphas_cumprod.numel()

    def alpha_bar(self, timesteps: Tensor, ndim: int = 4) -> Tensor:
        """Return ``a_t`` per sample, shaped to broadcast against a tensor of ``ndim`` dimensions.

        Args:
            timesteps: ``(B,)`` int64 timestep indices in ``[0, T)``.
            ndim: The number of dimensions of the tensor the result multiplies. Defaults to ``4``.

        Returns:
            ``(B, 1, ..., 1)`` with ``ndim`` dimensions.
        """
        return self.alphas_cumprod[timesteps].reshape(-1, *([1] * (ndim - 1)))

    def signal_rate(self, timesteps: Tensor, ndim: int = 4) -> Tensor:
        """``sqrt(a_t)``, shaped like :meth:`alpha_bar`."""
        return self.alpha_bar(timesteps, ndim).sqrt()

    def noise_rate(self, timesteps: Tensor, ndim: int = 4) -> Tensor:
        """``sqrt(1 - a_t)``, shaped like :meth:`alpha_bar`."""
        return (1.0 - self.alpha_bar(timesteps, ndim)).sqrt()

    def sample_timesteps(self, batch_size: int, device: torch.device | str | None = None) -> Tensor:
        """Draw training timesteps uniformly from ``[0, T)``.

        Args:
            batch_size: Number of samples B.
            device: Where the result lives. Defaults to the buffer's device.

        Returns:
            ``(B,)`` int64 timesteps.
        """
        device = self.alphas_cumprod.device if device is None else device
        return torch.randint(0, self.num_timesteps, (batch_size,), device=device)


def respaced_timesteps(num_timesteps: int, count: int) -> list[int]:
    """The ``count`` timesteps of DeCo-Diff's test-time chain, in the order they are visited (descending).

    The reference evaluates with ``create_diffusion(f"ddim{count}", diffusion_steps=T)`` and walks every index of
    that respaced process (``ddim_deviation_sample_loop(start_t=count)``). Its ``space_timesteps`` rule for
    ``"ddimN"`` (``diffusion/respace.py``, from OpenAI's improved-diffusion) keeps ``range(0, T, stride)`` for the
    smallest integer stride in ``[1, T)`` that gives exactly ``N`` steps; the UNet and ``a_t`` then see these
    original timesteps. With ``T = 10``: 5 -> ``[8, 6, 4, 2, 0]``, 4 -> ``[9, 6, 3, 0]``, 3 -> ``[8, 4, 0]``,
    2 -> ``[5, 0]``.

    Raises:
        ValueError: No integer stride gives exactly ``count`` steps (the reference raises too).
    """
    for stride in range(1, num_timesteps):
        kept = range(0, num_timesteps, stride)
        if len(kept) == count:
            return list(reversed(kept))
    raise ConfigError(
        f"reverse_steps={count}: no integer stride gives exactly {count} of {num_timesteps} timesteps "
        f"(the reference's 'ddim{count}' respacing); choose another count or give the timesteps explicitly"
    )


def check_chain(timesteps: Sequence[int], num_timesteps: int) -> list[int]:
    """Validate a test-time chain: non-empty, strictly decreasing timesteps in ``[0, T)``; returns it as a list.

    Raises:
        ValueError: The chain is empty, not strictly decreasing, or leaves ``[0, T)``.
    """
    chain = [int(t) for t in timesteps]
    decreasing = all(a > b for a, b in zip(chain, chain[1:], strict=False))
    if not chain or not decreasing or chain[0] >= num_timesteps or chain[-1] < 0:
        raise ConfigError(
            f"timesteps={chain} must be strictly decreasing timesteps in [0, {num_timesteps}), e.g. [8, 6, 4, 2, 0]"
        )
    return chain


def resolve_chain(num_timesteps: int, reverse_steps: int | None, timesteps: Sequence[int] | None) -> list[int]:
    """The test-time chain from exactly one of the reference's ``reverse_steps`` or explicit ``timesteps``.

    Raises:
        ValueError: Both or neither are given, or the one given is invalid.
    """
    if (reverse_steps is None) == (timesteps is None):
        raise ConfigError(
            f"give exactly one of reverse_steps (the reference's knob, e.g. 5 -> [8, 6, 4, 2, 0]) and timesteps "
            f"(explicit, e.g. [8, 6, 4, 2, 0]); got reverse_steps={reverse_steps}, timesteps={timesteps}"
        )
    if timesteps is None:
        return respaced_timesteps(num_timesteps, reverse_steps)
    return check_chain(timesteps, num_timesteps)
