"""The x0 estimate of one reverse step, shared by every sampler over embeddings: classifier-free guidance (Ho &
Salimans 2022, eq. 6) applied to the logits and to x0_hat alike, then the x0 temperature.

The samplers see the network as one callable,

    denoise(x_t, t, tokens, clean, self_cond, drop) -> (logits (B, L, V), x0_hat (B, L, d))

with x_t (B, L, d) the latents, t (B,), tokens (B, L) the ids at the `clean` (B, L) positions (the given prompt
and whatever a committing sampler has revealed), self_cond (B, L, d) or None, drop (B,) bool or None (True hides
the prompt: the unconditional branch of guidance).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Denoise = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor | None, Tensor | None], tuple[Tensor, Tensor]]


class Guidance:
    """The guided x0 estimate: logits = l_u + w (l_c - l_u) and x0_hat = x_u + w (x_c - x_u) for scale w (one
    network call when w = 1, two otherwise), then, for x0_temperature != 1, x0_hat = softmax(logits / T) E.

    The temperature sharpens (T < 1) the token distribution the estimate averages over: the diffusion
    counterpart of a lower AR temperature. `table` (V, d) is E.
    """

    def __init__(self, scale: float, x0_temperature: float, table: Tensor):
        self.scale, self.x0_temperature, self.table = float(scale), float(x0_temperature), table

    def estimate(self, denoise: Denoise, x_t: Tensor, t: Tensor, tokens: Tensor, clean: Tensor,
                 self_cond: Tensor | None) -> tuple[Tensor, Tensor]:
        """(logits (B, L, V), x0_hat (B, L, d)) at x_t, guided and tempered."""
        logits, x0_hat = denoise(x_t, t, tokens, clean, self_cond, None)
        if self.scale != 1.0:
            drop_all = torch.ones(x_t.shape[0], dtype=torch.bool, device=x_t.device)
            logits_u, x0_u = denoise(x_t, t, tokens, clean, self_cond, drop_all)
            logits = logits_u + self.scale * (logits - logits_u)
            x0_hat = x0_u + self.scale * (x0_hat - x0_u)
        if self.x0_temperature != 1.0:
            x0_hat = torch.softmax(logits / self.x0_temperature, dim=-1) @ self.table
        return logits, x0_hat
