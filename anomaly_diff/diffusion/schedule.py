"""The noise schedule a_t (cumulative signal rate) of a diffusers scheduler, held as a device-following buffer."""

import torch
from diffusers import DDIMScheduler
from torch import Tensor, nn


class NoiseSchedule(nn.Module):
    """Cumulative products ``a_t = prod_{s<=t} (1 - beta_s)`` of a diffusers noise schedule.

    The betas and their products come from :class:`diffusers.DDIMScheduler` (no re-derivation here); this
    module only keeps ``alphas_cumprod`` as a non-persistent buffer, so it follows the model's device and
    dtype and is rebuilt from the constructor arguments rather than stored in checkpoints.

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
            raise ValueError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}")
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
