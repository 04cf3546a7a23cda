"""Noise schedules over continuous time t in [0, 1], computed in fp32 (fp64 if given fp64).

Forward process (DDPM, Ho et al. 2020, eq. 4):  x_t = sqrt(abar(t)) x0 + sqrt(1 - abar(t)) eps.

- cosine (Nichol & Dhariwal 2021, eq. 17, as written in the DIMBA paper, i.e. without dividing by f(0)):
      abar(t) = cos^2(((t + s) / (1 + s)) * pi / 2),  s = 0.008
- sqrt (Diffusion-LM, Li et al. 2022):  abar(t) = 1 - sqrt(t + s),  s = 1e-4
- linear (Ho et al. 2020): beta linear from 1e-4 to 0.02 over 1000 steps, in continuous form
      abar(t) = exp(-(beta_0 * T t + (beta_1 - beta_0) * T t^2 / 2))

- rank (CANDI, Pynadath et al. 2025, "continuous rank degradation"): the noise level at which the true token's
  expected rank among all tokens, as a share of the vocabulary, is r*(t) = t / 2 (0: always nearest; 1/2: no
  information, as pure noise). For embeddings of equal norm sqrt(d) and nearly orthogonal to each other, a
  wrong token j is nearer to x_t = a e_i + s eps than e_i is when s eps.(e_j - e_i) > a d, which happens with
  probability Phi(-(a / s) sqrt(d / 2)). So r = Phi(-sqrt(SNR d / 2)) and
      SNR(t) = (2 / d) * Phi^{-1}(1 - t / 2)^2,  abar = SNR / (1 + SNR).
  It needs d_embed. It gives noisy latents even near t = 0 (at d = 64, SNR 0.34 where r = 5e-4): the
  hybrid corruption (dimba.diffusion.hybrid) keeps clean tokens for identity, and the latents carry rank.

`log_snr_shift` moves every noise level by a constant in log-SNR (log(abar / (1 - abar))). A shift of
-2 ln k is the same as shrinking the embeddings' norm by k against unit noise: the signal scale knob.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dimba.precision import upcast

SCHEDULES = ("cosine", "sqrt", "linear", "rank")
# abar is kept inside [ABAR_MIN, ABAR_MAX] so that log-SNR stays finite at t = 0 and t = 1.
ABAR_MIN, ABAR_MAX = 1e-7, 1.0 - 1e-7


class NoiseSchedule:
    """abar(t) for one of SCHEDULES, optionally shifted in log-SNR. Stateless, no parameters."""

    def __init__(self, name: str = "cosine", log_snr_shift: float = 0.0, s: float | None = None,
                 d_embed: int | None = None):
        if name not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {name!r}")
        if name == "rank" and not d_embed:
            raise ValueError("the rank schedule needs the embedding size d_embed")
        self.name, self.d_embed = name, d_embed
        self.log_snr_shift = float(log_snr_shift)
        self.s = s if s is not None else {"cosine": 0.008, "sqrt": 1e-4, "linear": 0.0, "rank": 0.0}[name]

    def base_alpha_bar(self, t: Tensor) -> Tensor:
        """The unshifted formula, abar(t) for t in [0, 1]."""
        t = upcast(torch.as_tensor(t))
        if self.name == "cosine":
            return torch.cos((t + self.s) / (1 + self.s) * math.pi / 2) ** 2
        if self.name == "sqrt":
            return 1 - torch.sqrt(t + self.s)
        if self.name == "rank":
            snr = 2.0 / self.d_embed * torch.special.ndtri(1 - t / 2) ** 2
            return 1 / (1 + 1 / snr)  # = snr / (1 + snr), and 1 (not nan) at t = 0 where snr is infinite
        beta0, beta1, steps = 1e-4, 0.02, 1000
        return torch.exp(-(beta0 * steps * t + (beta1 - beta0) * steps * t**2 / 2))

    def log_snr(self, t: Tensor) -> Tensor:
        abar = self.base_alpha_bar(t).clamp(ABAR_MIN, ABAR_MAX)
        return torch.log(abar) - torch.log1p(-abar) + self.log_snr_shift

    def alpha_bar(self, t: Tensor) -> Tensor:
        """abar(t) including the shift; shape of t."""
        if self.log_snr_shift == 0.0:
            return self.base_alpha_bar(t).clamp(ABAR_MIN, ABAR_MAX)
        return torch.sigmoid(self.log_snr(t))

    def betas(self, num_steps: int) -> Tensor:
        """Discrete beta_k = 1 - abar(k/T) / abar((k-1)/T), k = 1..T (the paper's definition)."""
        t = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
        abar = self.alpha_bar(t)
        return 1 - abar[1:] / abar[:-1]

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = sqrt(abar) x0 + sqrt(1 - abar) eps for x0, noise (B, L, D) and t (B,). Returns x0's dtype."""
        abar = self.alpha_bar(t).view(-1, *([1] * (x0.dim() - 1)))
        return (abar.sqrt() * upcast(x0) + (1 - abar).sqrt() * upcast(noise)).to(x0.dtype)
