"""The reverse-diffusion loop of Gaussian diffusion: from pure noise to tokens in `steps` denoiser calls (twice
that with guidance), every generated position noised until the end.

The loop sees the network only as a `Denoise` callable (`dimba.diffusion.guidance`), so it works for any
denoiser over embeddings.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from dimba.diffusion.guidance import Denoise, Guidance
from dimba.diffusion.samplers import DDIMSampler
from dimba.diffusion.time_warp import TimeWarp
from dimba.sampling import ExampleStreams, SamplingConfig, sample_tokens

OnStep = Callable[[int, Tensor], None]


@torch.no_grad()
def reverse_diffusion(denoise: Denoise, sampler: DDIMSampler, guidance: Guidance, cfg: SamplingConfig,
                      streams: ExampleStreams, tokens: Tensor, given: Tensor, warp: TimeWarp | None = None,
                      on_step: OnStep | None = None) -> Tensor:
    """Run `cfg.steps` reverse steps from x_1 ~ N(0, I) over the positions of tokens (B, L) not given (B, L).

    Reads cfg.steps, cfg.clamp_from (snap x0_hat to the nearest embedding from that share of the steps on),
    cfg.self_condition, cfg.warped_steps (space the steps by the learned warp), cfg.temperature and cfg.top_p
    (the final draw). streams: one random stream per example (starting noise, DDPM noise, the final draw).
    on_step(i, tokens): called after step i with the argmax tokens (B, L) of that step's estimate.
    Returns the sampled tokens (B, L) from the last call's logits.
    """
    table = guidance.table
    batch, length = tokens.shape
    d_embed = table.shape[1]
    x = streams.randn(length, d_embed)
    times = sampler.timesteps(cfg.steps, warp if cfg.warped_steps else None)
    clamp_start = int(cfg.clamp_from * cfg.steps)
    self_cond, logits = None, None
    for i in range(cfg.steps):
        t = torch.full((batch,), float(times[i]), device=x.device)
        logits, x0_hat = guidance.estimate(denoise, x, t, tokens, given, self_cond)
        if i >= clamp_start:
            x0_hat = table[torch.cdist(x0_hat, table.expand(batch, *table.shape)).argmin(-1)]
        self_cond = x0_hat if cfg.self_condition else None
        noise = streams.randn(length, d_embed) if sampler.eta > 0 and times[i + 1] > 0 else None
        x = sampler.step(x, x0_hat, float(times[i]), float(times[i + 1]), noise)
        if on_step is not None:
            on_step(i, logits.argmax(-1))
    return sample_tokens(logits, cfg.temperature, cfg.top_p, streams)
