"""The reverse-diffusion loop: from pure noise to tokens in `steps` denoiser calls.

The loop sees the network only as a callable `denoise(x_t, t, self_cond, drop_prompt) -> (logits, x0_hat)`
with the prompt already bound, so it works for any denoiser.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from dimba.diffusion.samplers import DDIMSampler
from dimba.diffusion.time_warp import TimeWarp
from dimba.sampling import sample_tokens, sampling_generator

Denoise = Callable[[Tensor, Tensor, Tensor | None, Tensor | None], tuple[Tensor, Tensor]]


@dataclass
class SamplingConfig:
    """How to sample: these are not model hyper-parameters and may change for any checkpoint."""

    sampler: str = "ddim"  # "ddim" or "ddpm" (= DDIM with eta 1)
    steps: int = 32  # denoiser calls
    eta: float = 0.0  # DDIM stochasticity (ignored by ddpm)
    guidance: float = 1.0  # classifier-free guidance scale; 1 = conditional only
    self_condition: bool = True  # feed the previous x0 estimate back (if the model was trained with it)
    clamp_from: float = 1.0  # fraction of the steps after which x0_hat snaps to the nearest embedding; 1 = never
    temperature: float = 1.0  # on the final projection; 0 = argmax
    # Softmax temperature of x0_hat = softmax(logits / x0_temperature) E inside the loop (softmax-x0 models
    # only): below 1 the estimate leans to the likeliest tokens, the diffusion analogue of a lower AR
    # temperature (less diverse, judged more fluent); 1 = the model's own estimate.
    x0_temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    warped_steps: bool = True  # space the steps by the learned time warp when the model has one

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not 0 <= self.clamp_from <= 1:
            raise ValueError(f"clamp_from must be in [0, 1], got {self.clamp_from}")
        if self.x0_temperature <= 0:
            raise ValueError(f"x0_temperature must be > 0, got {self.x0_temperature}")


@torch.no_grad()
def reverse_diffusion(denoise: Denoise, sampler: DDIMSampler, shape: tuple[int, int, int], table: Tensor,
                      cfg: SamplingConfig, warp: TimeWarp | None = None, device: torch.device | str = "cpu",
                      record_trajectory: bool = False) -> tuple[Tensor, list[Tensor]]:
    """Run `cfg.steps` reverse steps from x_1 ~ N(0, I) of `shape` (B, L, d_embed).

    table: (V, d_embed) embedding table, for clamping to the nearest embedding.
    Returns the sampled tokens (B, L) from the last call's logits, and (if asked) the argmax tokens
    after each step.
    """
    generator = sampling_generator(cfg.seed, device)
    batch = shape[0]
    x = torch.randn(shape, generator=generator, device=device)
    times = sampler.timesteps(cfg.steps, warp if cfg.warped_steps else None)
    clamp_start = int(cfg.clamp_from * cfg.steps)
    self_cond, logits, trajectory = None, None, []
    drop_all = torch.ones(batch, dtype=torch.bool, device=device)
    for i in range(cfg.steps):
        t = torch.full((batch,), float(times[i]), device=device)
        logits, x0_hat = denoise(x, t, self_cond, None)
        if cfg.guidance != 1.0:
            logits_u, x0_u = denoise(x, t, self_cond, drop_all)
            logits = logits_u + cfg.guidance * (logits - logits_u)
            x0_hat = x0_u + cfg.guidance * (x0_hat - x0_u)
        if cfg.x0_temperature != 1.0:
            x0_hat = torch.softmax(logits / cfg.x0_temperature, dim=-1) @ table
        if i >= clamp_start:
            x0_hat = table[torch.cdist(x0_hat, table.expand(batch, *table.shape)).argmin(-1)]
        self_cond = x0_hat if cfg.self_condition else None
        x = sampler.step(x, x0_hat, float(times[i]), float(times[i + 1]), generator)
        if record_trajectory:
            trajectory.append(logits.argmax(-1).cpu())
    tokens = sample_tokens(logits, cfg.temperature, cfg.top_p, generator)
    return tokens, trajectory
