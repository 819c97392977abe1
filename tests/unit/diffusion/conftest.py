import math

import pytest


@pytest.fixture
def cosine_alphas_cumprod():
    """a_t of Nichol & Dhariwal (2021) eq. 17 with beta clipped at 0.999, written out independently of diffusers."""

    def alphas_cumprod(steps: int) -> list[float]:
        def f(t: float) -> float:
            return math.cos((t / steps + 0.008) / 1.008 * math.pi / 2) ** 2

        out, product = [], 1.0
        for t in range(steps):
            product *= 1 - min(1 - f(t + 1) / f(t), 0.999)
            out.append(product)
        return out

    return alphas_cumprod
