"""Bidirectional Mamba-2: one causal mixer left-to-right, a second over the reversed sequence.

The denoiser of a diffusion LM sees the whole (noisy) sequence, so every position must depend on tokens
before and after it (cf. MDLM's DiMamba, Caduceus' BiMamba). The two directions have separate parameters.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dimba.models.config import COMBINES
from dimba.models.mamba2 import Mamba2


class BidirectionalMamba2(nn.Module):
    """(batch, L, d_model) -> (batch, L, d_model), each output depending on the whole sequence.

    combine="sum": forward(x) + flip(backward(flip(x))).
    combine="concat": a linear projection of the two outputs concatenated (2 * d_model -> d_model).
    Extra keyword arguments go to both `Mamba2` mixers.
    """

    def __init__(self, d_model: int, combine: str = "sum", **mamba_kwargs):
        super().__init__()
        if combine not in COMBINES:
            raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")
        self.combine = combine
        self.forward_mixer = Mamba2(d_model, **mamba_kwargs)
        self.backward_mixer = Mamba2(d_model, **mamba_kwargs)
        self.proj = nn.Linear(2 * d_model, d_model, bias=False) if combine == "concat" else None

    def forward(self, x: Tensor) -> Tensor:
        ahead = self.forward_mixer(x)  # (B, L, D)
        behind = self.backward_mixer(x.flip(1)).flip(1)  # (B, L, D)
        if self.proj is None:
            return ahead + behind
        return self.proj(torch.cat([ahead, behind], dim=-1))
