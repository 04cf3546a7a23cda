"""The autoregressive baseline: a causal Mamba-2 language model on the same blocks as the denoiser
(unidirectional, unconditioned), with tied input/output embeddings and recurrent decoding."""

from __future__ import annotations

from torch import Tensor, nn

from dimba.models.blocks import MambaBlock, RMSNorm
from dimba.models.config import MambaConfig
from dimba.models.mamba2 import Mamba2State


class ARLanguageModel(nn.Module):
    """tokens (B, L) -> next-token logits (B, L, vocab): causal blocks of the backbone's `MambaConfig`."""

    def __init__(self, net: MambaConfig, vocab_size: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, net.d_model)
        nn.init.normal_(self.embedding.weight, std=0.02)
        self.blocks = nn.ModuleList(MambaBlock(net.d_model, d_cond=None, bidirectional=False,
                                               mlp_ratio=net.mlp_ratio, layer_idx=i, **net.mixer_kwargs())
                                    for i in range(net.n_layers))
        self.norm_f = RMSNorm(net.d_model)

    def logits(self, h: Tensor) -> Tensor:
        """Tied output projection: (..., d_model) -> (..., vocab)."""
        return self.norm_f(h) @ self.embedding.weight.t()

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens (B, L) -> next-token logits (B, L, vocab)."""
        h = self.embedding(tokens)
        for block in self.blocks:
            h = block(h)
        return self.logits(h)

    def prefill(self, tokens: Tensor) -> tuple[Tensor, list[Mamba2State]]:
        """tokens (B, L) -> logits at the last position (B, vocab) and one state per block."""
        h = self.embedding(tokens)
        states = []
        for block in self.blocks:
            h, state = block.prefill(h)
            states.append(state)
        return self.logits(h[:, -1]), states

    def step(self, token: Tensor, states: list[Mamba2State]) -> tuple[Tensor, list[Mamba2State]]:
        """token (B,) -> logits (B, vocab) for the next position, and the next states."""
        h = self.embedding(token)
        new_states = []
        for block, state in zip(self.blocks, states, strict=True):
            h, state = block.step(h, state)
            new_states.append(state)
        return self.logits(h), new_states
