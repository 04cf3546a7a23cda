"""The masked-diffusion network (MDLM, Sahoo et al. 2024): token ids, some of them the absorbing [MASK] state,
through the bidirectional Mamba-2 backbone (MDLM's DiMamba shape: a second mixer over the flipped sequence),
to logits over the real vocabulary. No time input: with an absorbing state the answer depends on t only
through which tokens are masked, which the input already shows (MDLM, Section 3.2). With `net.block_size`, block
diffusion (BD3-LM, Arriola et al. 2025): autoregressive across blocks, masked diffusion inside one."""

from __future__ import annotations

from torch import Tensor, nn

from dimba.models.blocks import BlockState, MambaBlock, RMSNorm
from dimba.models.config import MambaConfig


class MaskedDenoiser(nn.Module):
    """tokens (B, L) with [MASK] = vocab_size where unknown -> logits (B, L, vocab_size), tied to the input
    embedding of the real tokens."""

    def __init__(self, net: MambaConfig, vocab_size: int):
        super().__init__()
        self.mask_id = vocab_size
        self.block_size = net.block_size
        self.embedding = nn.Embedding(vocab_size + 1, net.d_model)  # the last row is [MASK]
        nn.init.normal_(self.embedding.weight, std=0.02)
        self.blocks = nn.ModuleList(MambaBlock(net.d_model, d_cond=None, bidirectional=True, mlp_ratio=net.mlp_ratio,
                                               layer_idx=i, **net.mixer_kwargs()) for i in range(net.n_layers))
        self.norm_f = RMSNorm(net.d_model)

    def _logits(self, h: Tensor) -> Tensor:
        # fp32 logits over the real tokens only: [MASK] is never a prediction (MDLM's zero-masking).
        return (self.norm_f(h) @ self.embedding.weight[:self.mask_id].t()).float()

    def forward(self, tokens: Tensor, clean_tokens: Tensor | None = None) -> Tensor:
        """tokens (B, L) -> logits (B, L, V). With clean_tokens (B, L), L a multiple of block_size: block
        diffusion's training pass, each block of `tokens` seeing the clean tokens before it and itself only."""
        h = self.embedding(tokens)  # (B, L, D)
        if clean_tokens is None:
            for block in self.blocks:
                h = block(h)
            return self._logits(h)
        B, L, D = h.shape
        if L % self.block_size:
            raise ValueError(f"{L} positions are not a whole number of blocks of {self.block_size}")
        h_clean, h_noisy = self.embedding(clean_tokens), h.reshape(-1, self.block_size, D)
        for block in self.blocks:
            h_clean, h_noisy = block.two_stream(h_clean, None, h_noisy, None, self.block_size)
        return self._logits(h_noisy.reshape(B, L, D))

    # ------------------------------------------------------------------ block diffusion: generation
    def start_blocks(self) -> BlockState:
        return BlockState([None] * len(self.blocks))

    def advance(self, state: BlockState, tokens: Tensor) -> BlockState:
        """The state after the committed tokens (B, n) that follow it."""
        h, layers = self.embedding(tokens), []
        for block, layer in zip(self.blocks, state.layers, strict=True):
            h, after = block.block_from(h, None, layer, return_state=True)
            layers.append(after)
        return BlockState(layers)

    def denoise_block(self, state: BlockState, tokens: Tensor) -> Tensor:
        """`forward` on one block (B, n) after what `state` summarises: logits (B, n, V) at cost O(n)."""
        h = self.embedding(tokens)
        for block, layer in zip(self.blocks, state.layers, strict=True):
            h, _ = block.block_from(h, None, layer)
        return self._logits(h)
