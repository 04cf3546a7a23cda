"""The autoregressive baseline: a causal Mamba-2 language model on the same blocks as the denoiser
(unidirectional, unconditioned), with tied input/output embeddings and recurrent decoding."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dimba.models.blocks import MambaBlock, RMSNorm
from dimba.models.mamba2 import Mamba2State


class ARLanguageModel(nn.Module):
    def __init__(self, vocab_size: int, d_model: int = 256, n_layers: int = 6, d_state: int = 32,
                 headdim: int = 64, expand: int = 2, chunk_size: int = 64, mlp_ratio: float = 0.0,
                 impl: str = "auto"):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, d_model)
        nn.init.normal_(self.embedding.weight, std=0.02)
        mamba = dict(d_state=d_state, headdim=headdim, expand=expand, chunk_size=chunk_size, impl=impl)
        self.blocks = nn.ModuleList(MambaBlock(d_model, d_cond=None, bidirectional=False, mlp_ratio=mlp_ratio,
                                               layer_idx=i, **mamba) for i in range(n_layers))
        self.norm_f = RMSNorm(d_model)

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


def stack_states(per_example: list[list[Mamba2State]]) -> list[Mamba2State]:
    """Batch-1 states of each example (list over examples of lists over blocks) -> batched states."""
    return [Mamba2State(torch.cat([ex[i].conv for ex in per_example]), torch.cat([ex[i].ssm for ex in per_example]))
            for i in range(len(per_example[0]))]
