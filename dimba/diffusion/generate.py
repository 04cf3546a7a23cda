"""The reverse-diffusion loop: from pure noise to tokens in `steps` denoiser calls.

The loop sees the network only as a callable `denoise(x_t, t, self_cond, drop_prompt) -> (logits, x0_hat)`
with the prompt already bound, so it works for any denoiser.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from dimba.diffusion.samplers import DDIMSampler
from dimba.diffusion.time_warp import TimeWarp
from dimba.sampling import ExampleStreams, SamplingConfig, sample_tokens

Denoise = Callable[[Tensor, Tensor, Tensor | None, Tensor | None], tuple[Tensor, Tensor]]
OnStep = Callable[[int, Tensor], None]


@torch.no_grad()
def reverse_diffusion(denoise: Denoise, sampler: DDIMSampler, shape: tuple[int, int, int], table: Tensor,
                      cfg: SamplingConfig, streams: ExampleStreams, warp: TimeWarp | None = None,
                      on_step: OnStep | None = None) -> Tensor:
    """Run `cfg.steps` reverse steps from x_1 ~ N(0, I) of `shape` (B, L, d_embed).

    table: (V, d_embed) embedding table, for clamping to the nearest embedding.
    streams: one random stream per example (starting noise, DDPM noise, the final draw).
    on_step(i, tokens): called after step i with the argmax tokens (B, L) of that step's estimate.
    Returns the sampled tokens (B, L) from the last call's logits.
    """
    batch, length, d_embed = shape
    x = streams.randn(length, d_embed)
    times = sampler.timesteps(cfg.steps, warp if cfg.warped_steps else None)
    clamp_start = int(cfg.clamp_from * cfg.steps)
    self_cond, logits = None, None
    drop_all = torch.ones(batch, dtype=torch.bool, device=x.device)
    for i in range(cfg.steps):
        t = torch.full((batch,), float(times[i]), device=x.device)
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
        noise = streams.randn(length, d_embed) if sampler.eta > 0 and times[i + 1] > 0 else None
        x = sampler.step(x, x0_hat, float(times[i]), float(times[i + 1]), noise)
        if on_step is not None:
            on_step(i, logits.argmax(-1))
    return sample_tokens(logits, cfg.temperature, cfg.top_p, streams)
