"""DDIM (Song et al. 2021, eq. 12) and DDPM as DDIM with eta = 1, over continuous time.

One update turns the network's x0 prediction at noise level t into x at the earlier level t_prev:

    eps_hat = (x_t - sqrt(abar_t) x0_hat) / sqrt(1 - abar_t)
    sigma   = eta * sqrt((1 - abar_prev) / (1 - abar_t)) * sqrt(1 - abar_t / abar_prev)      (eq. 16)
    x_prev  = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z

With eta = 1 this is exactly the DDPM posterior q(x_prev | x_t, x0_hat) (Ho et al. 2020, eqs. 6-7);
with eta = 0 it is deterministic and returns x0_hat when the prediction is the true x0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dimba.diffusion.schedules import NoiseSchedule
from dimba.diffusion.time_warp import TimeWarp
from dimba.precision import upcast
from dimba.sampling import SAMPLERS


class DDIMSampler:
    """Stateless apart from its time grid. `eta` = 0: DDIM; `eta` = 1: DDPM (ancestral)."""

    def __init__(self, schedule: NoiseSchedule, eta: float = 0.0):
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.schedule, self.eta = schedule, float(eta)

    @classmethod
    def named(cls, name: str, schedule: NoiseSchedule, eta: float = 0.0) -> DDIMSampler:
        if name not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {name!r}")
        return cls(schedule, eta=1.0 if name == "ddpm" else eta)

    def timesteps(self, num_steps: int, warp: TimeWarp | None = None) -> Tensor:
        """num_steps + 1 times from 1 down to 0 (float64). Evenly spaced, or evenly spaced in the learned
        CE curve when a ready TimeWarp is given, so that each step removes an equal share of uncertainty."""
        if num_steps < 1:
            raise ValueError(f"steps must be >= 1, got {num_steps}")
        u = torch.linspace(1, 0, num_steps + 1, dtype=torch.float64)
        if warp is None or not warp.ready:
            return u
        times = warp.warp(u)
        times[0], times[-1] = 1.0, 0.0  # a flat stretch of the CDF must not cut the chain short
        return times

    def step(self, x_t: Tensor, x0_hat: Tensor, t: float, t_prev: float, noise: Tensor | None = None) -> Tensor:
        """x_t, x0_hat: (B, L, D) -> x_{t_prev} (B, L, D), computed in fp32.

        noise: (B, L, D) standard normal z, needed when eta > 0 (the sampler itself draws nothing).
        The step to t_prev = 0 returns x0_hat itself: the paper's cosine formula (without dividing by its
        value at 0) leaves abar(0) = 0.99984, and a final sample should carry no noise (DDIM's abar_0 = 1).
        """
        if t_prev <= 0:
            return upcast(x0_hat)
        abar_t = self.schedule.alpha_bar(torch.tensor(t, dtype=torch.float64))
        abar_prev = self.schedule.alpha_bar(torch.tensor(t_prev, dtype=torch.float64))
        x_t, x0_hat = upcast(x_t), upcast(x0_hat)
        eps_hat = (x_t - abar_t.sqrt() * x0_hat) / (1 - abar_t).sqrt()
        sigma = self.eta * ((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)).clamp(min=0).sqrt()
        direction = (1 - abar_prev - sigma**2).clamp(min=0).sqrt()
        x_prev = abar_prev.sqrt() * x0_hat + direction * eps_hat
        if sigma > 0:
            if noise is None:
                raise ValueError("a stochastic step (eta > 0) needs noise")
            x_prev = x_prev + sigma * upcast(noise).to(x_prev.device)
        return x_prev
