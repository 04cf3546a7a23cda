"""Hybrid discrete-continuous diffusion (after CANDI, Pynadath, Shi & Zhang 2025, arXiv 2510.22510).

Corruption at time t: each generated token is independently kept clean with probability alpha_t = 1 - t (its
exact embedding, flagged clean to the network), or corrupted: its embedding noised to the level the schedule
gives at t (`x = sqrt(abar_t) e + sqrt(1 - abar_t) eps`). With the "rank" schedule the corrupted latents stay
informative but uncertain: the true token's expected rank among all tokens is a t/2 share of the vocabulary.
Clean tokens carry identity (what masked diffusion learns from), corrupted latents carry rank (what Gaussian
diffusion learns from); a pure Gaussian corruption has one or the other at any t, never both (CANDI's
"temporal dissonance").

Sampling starts with every generated token corrupted (pure noise at t = 1). Each step from t to s reveals a
(t - s)/t share of the still-corrupted tokens (`dimba.diffusion.masking`), drawn from the x0 logits (at the
sampling `temperature`, with top-p), and moves the others' latents one DDIM step towards the current x0
estimate (sharpened by `x0_temperature`, as in Gaussian DIMBA), or, with `latent_target: sample`, towards the
embedding of the token drawn for them this step (CANDI's cached sampler): training only ever noises real
embeddings, which the mean of an uncertain x0 estimate is not (it is shorter, a blend of many tokens).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from dimba.diffusion.masking import choose_reveals, hidden_after
from dimba.diffusion.samplers import DDIMSampler
from dimba.sampling import ExampleStreams, SamplingConfig, sample_tokens

# denoise(x_t (B, L, d), t (B,), tokens (B, L), clean (B, L), self_cond, drop_prompt) -> (logits, x0_hat), with the
# given positions bound (they feed the prompt encoder); `clean` marks them and the tokens revealed so far.
HybridDenoise = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor | None, Tensor | None], tuple[Tensor, Tensor]]


def likelihood_logits(x_t: Tensor, table: Tensor, abar: Tensor) -> Tensor:
    """log p(x_t | token j) up to a constant, for x_t = sqrt(abar) e_j + sqrt(1 - abar) eps (Plaid's output
    prior, Gulrajani & Hashimoto 2023): (a / s^2) x_t . e_j - (a^2 / (2 s^2)) |e_j|^2, a = sqrt(abar),
    s^2 = 1 - abar. Added to the network's logits it makes them the exact posterior when the network's own
    logits are the prior of the token given the rest.

    x_t: (B, L, d); table: (V, d); abar: (B,). Returns (B, L, V) in fp32.
    """
    abar = abar.float()[:, None, None]
    s2 = 1 - abar
    return (abar.sqrt() / s2) * (x_t.float() @ table.float().t()) - abar / (2 * s2) * table.float().pow(2).sum(-1)


@torch.no_grad()
def hybrid_reverse_diffusion(denoise: HybridDenoise, sampler: DDIMSampler, table: Tensor, cfg: SamplingConfig,
                             streams: ExampleStreams, tokens: Tensor, given: Tensor,
                             on_step: Callable[[int, Tensor], None] | None = None) -> Tensor:
    """Fill the positions of tokens (B, L) that are not given (B, L), in cfg.steps network calls (twice that
    with guidance); returns (B, L).

    Revealed tokens are drawn from the logits at cfg.temperature (0: argmax) with top_p; cfg.reveal picks random
    positions or the most probable first; the hidden latents step towards softmax(logits / x0_temperature) E
    (cfg.latent_target "mean") or towards the embedding of this step's draw ("sample"). cfg.step_spacing
    "cosine" puts the steps at t = sin(pi/2 u), u uniform: fewer reveals per step at the start.
    on_step(i, tokens) gets the tokens so far, -1 where still hidden.
    """
    batch, length = tokens.shape
    x = streams.randn(length, table.shape[1])
    hidden = ~given
    n_hidden = hidden.sum(1)  # (B,): each example reveals its own share per step
    times = sampler.timesteps(cfg.steps)
    if cfg.step_spacing == "cosine":  # hidden share = t still holds at every step; only the grid changes
        times = torch.sin(times * (math.pi / 2))
    drop_all = torch.ones(batch, dtype=torch.bool, device=x.device)
    self_cond = None
    for i in range(cfg.steps):
        t, s = float(times[i]), float(times[i + 1])
        t_batch = torch.full((batch,), t, device=x.device)
        logits, x0_hat = denoise(x, t_batch, tokens, ~hidden, self_cond, None)
        if cfg.guidance != 1.0:
            logits_u, x0_u = denoise(x, t_batch, tokens, ~hidden, self_cond, drop_all)
            logits = logits_u + cfg.guidance * (logits - logits_u)
            x0_hat = x0_u + cfg.guidance * (x0_hat - x0_u)
        if cfg.x0_temperature != 1.0:
            x0_hat = torch.softmax(logits / cfg.x0_temperature, dim=-1) @ table
        count = (hidden.sum(1) - hidden_after(n_hidden, s)).clamp(min=0)
        draws = sample_tokens(logits, cfg.temperature, cfg.top_p, streams)
        confidence = torch.softmax(logits, dim=-1).amax(-1) if cfg.reveal == "confidence" else None
        reveal = choose_reveals(hidden, count, confidence, streams)
        tokens = torch.where(reveal, draws, tokens)
        hidden &= ~reveal
        noise = streams.randn(length, table.shape[1]) if sampler.eta > 0 and s > 0 else None
        target = table[draws] if cfg.latent_target == "sample" else x0_hat
        x = torch.where(hidden[..., None], sampler.step(x, target, t, s, noise), table[tokens])
        self_cond = torch.where(hidden[..., None], x0_hat, table[tokens]) if cfg.self_condition else None
        if on_step is not None:
            on_step(i, tokens.masked_fill(hidden, -1))
    return tokens
