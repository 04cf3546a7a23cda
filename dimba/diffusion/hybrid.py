"""Hybrid discrete-continuous diffusion (after CANDI, Pynadath, Shi & Zhang 2025, arXiv 2510.22510).

Corruption at time t: each generated token is independently kept clean with probability alpha_t = 1 - t (its
exact embedding, flagged clean to the network), or corrupted: its embedding noised to the level the schedule
gives at t (`x = sqrt(abar_t) e + sqrt(1 - abar_t) eps`). With the "rank" schedule the corrupted latents stay
informative but uncertain: the true token's expected rank among all tokens is a t/2 share of the vocabulary.
Clean tokens carry identity (what masked diffusion learns from), corrupted latents carry rank (what Gaussian
diffusion learns from); a pure Gaussian corruption has one or the other at any t, never both (CANDI's
"temporal dissonance").

Sampling starts with every generated token corrupted (pure noise at t = 1). Each step from t to s reveals a
(t - s)/t share of the still-corrupted tokens (`CommitStep`), drawn from the guided x0 logits, and moves the
others' latents one DDIM step towards the current x0 estimate (`Guidance`: guided, sharpened by x0_temperature).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from dimba.diffusion.guidance import Denoise, Guidance
from dimba.diffusion.masking import CommitStep
from dimba.diffusion.samplers import DDIMSampler
from dimba.sampling import ExampleStreams


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
def hybrid_reverse_diffusion(denoise: Denoise, sampler: DDIMSampler, guidance: Guidance, commit: CommitStep,
                             steps: int, self_condition: bool, streams: ExampleStreams, tokens: Tensor,
                             given: Tensor, on_step: Callable[[int, Tensor], None] | None = None) -> Tensor:
    """Fill the positions of tokens (B, L) that are not given (B, L) in `steps` reverse steps (each one network
    call, two with guidance); returns (B, L).

    self_condition: feed each step's x0 estimate (the embeddings of the revealed tokens where revealed) to the
    next call. on_step(i, tokens): after step i, the tokens so far, -1 where still hidden.
    """
    table = guidance.table
    batch, length = tokens.shape
    x = streams.randn(length, table.shape[1])
    hidden = ~given
    n_hidden = hidden.sum(1)  # (B,): each example reveals its own share per step
    times = sampler.timesteps(steps)
    self_cond = None
    for i in range(steps):
        t, s = float(times[i]), float(times[i + 1])
        t_batch = torch.full((batch,), t, device=x.device)
        logits, x0_hat = guidance.estimate(denoise, x, t_batch, tokens, ~hidden, self_cond)
        tokens, hidden = commit.step(tokens, hidden, commit.count(hidden, n_hidden, s), logits, streams)
        noise = streams.randn(length, table.shape[1]) if sampler.eta > 0 and s > 0 else None
        x = torch.where(hidden[..., None], sampler.step(x, x0_hat, t, s, noise), table[tokens])
        self_cond = torch.where(hidden[..., None], x0_hat, table[tokens]) if self_condition else None
        if on_step is not None:
            on_step(i, tokens.masked_fill(hidden, -1))
    return tokens
