"""Bidirectional Mamba-2: one causal mixer left-to-right, a second over the reversed sequence, outputs summed.

The denoiser of a diffusion LM sees the whole (noisy) sequence, so every position must depend on tokens
before and after it (cf. MDLM's DiMamba, Caduceus' BiMamba). The two directions have separate parameters.
"""

from __future__ import annotations

from torch import Tensor, nn

from dimba.models.mamba2 import Mamba2


class BidirectionalMamba2(nn.Module):
    """(batch, L, d_model) -> (batch, L, d_model): forward(x) + flip(backward(flip(x))), each output depending on
    the whole sequence. Extra keyword arguments go to both `Mamba2` mixers."""

    def __init__(self, d_model: int, **mamba_kwargs):
        super().__init__()
        self.forward_mixer = Mamba2(d_model, **mamba_kwargs)
        self.backward_mixer = Mamba2(d_model, **mamba_kwargs)

    def forward(self, x: Tensor) -> Tensor:
        ahead = self.forward_mixer(x)  # (B, L, D)
        behind = self.backward_mixer(x.flip(1)).flip(1)  # (B, L, D)
        return ahead + behind
