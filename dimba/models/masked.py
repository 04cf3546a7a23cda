"""The masked-diffusion network (MDLM, Sahoo et al. 2024): token ids, some of them the absorbing [MASK] state,
through the bidirectional Mamba-2 backbone (MDLM's DiMamba shape: a second mixer over the flipped sequence),
to logits over the real vocabulary. No time input: with an absorbing state the answer depends on t only
through which tokens are masked, which the input already shows (MDLM, Section 3.2)."""

from __future__ import annotations

from torch import Tensor, nn

from dimba.models.blocks import MambaBlock, RMSNorm
from dimba.models.config import MambaConfig


class MaskedDenoiser(nn.Module):
    """tokens (B, L) with [MASK] = vocab_size where unknown -> logits (B, L, vocab_size), tied to the input
    embedding of the real tokens."""

    def __init__(self, net: MambaConfig, vocab_size: int):
        super().__init__()
        self.mask_id = vocab_size
        self.embedding = nn.Embedding(vocab_size + 1, net.d_model)  # the last row is [MASK]
        nn.init.normal_(self.embedding.weight, std=0.02)
        self.blocks = nn.ModuleList(MambaBlock(net.d_model, d_cond=None, bidirectional=True, mlp_ratio=net.mlp_ratio,
                                               layer_idx=i, **net.mixer_kwargs()) for i in range(net.n_layers))
        self.norm_f = RMSNorm(net.d_model)

    def forward(self, tokens: Tensor) -> Tensor:
        h = self.embedding(tokens)  # (B, L, D)
        for block in self.blocks:
            h = block(h)
        # fp32 logits over the real tokens only: [MASK] is never a prediction (MDLM's zero-masking).
        return (self.norm_f(h) @ self.embedding.weight[:self.mask_id].t()).float()  # (B, L, V)
