"""Bidirectional Mamba-2: one causal mixer left-to-right, a second over the reversed sequence, outputs summed.

The denoiser of a diffusion LM sees the whole (noisy) sequence, so every position must depend on tokens
before and after it (cf. MDLM's DiMamba, Caduceus' BiMamba). The two directions have separate parameters.

Block-causal use (block diffusion, `MambaConfig.block_size`): the left-to-right mixer runs across blocks, carrying
its state; the right-to-left mixer only inside a block. A block then sees everything before it and all of
itself, nothing after it.
"""

from __future__ import annotations

from torch import Tensor, nn

from dimba.models.mamba2 import Mamba2, Mamba2State


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

    def within_blocks(self, x: Tensor, block: int) -> Tensor:
        """The right-to-left mixer inside each block of x (B, L, D), L a multiple of block."""
        rows = x.reshape(-1, block, x.shape[-1])  # (B * n_blocks, block, D)
        return self.backward_mixer(rows.flip(1)).flip(1).reshape(x.shape)

    def two_stream(self, clean: Tensor, noisy: Tensor, block: int) -> tuple[Tensor, Tensor]:
        """Block diffusion's training pass: clean (B, L, D) left-to-right over the whole sequence, noisy
        (B * n_blocks, block, D) each block from the clean stream's state at its start; right-to-left inside
        blocks for both. Returns (clean out (B, L, D), noisy out (B * n_blocks, block, D))."""
        ahead_clean, ahead_noisy = self.forward_mixer.two_stream(clean, noisy, block)
        return ahead_clean + self.within_blocks(clean, block), ahead_noisy + self.within_blocks(noisy, block)

    def block_from(self, x: Tensor, state: Mamba2State | None, return_state: bool = False
                   ) -> tuple[Tensor, Mamba2State | None]:
        """One block x (B, n, D) after what `state` summarises (None: the sequence start): (output, and if asked the
        left-to-right state after the block)."""
        ahead, after = self.forward_mixer.prefill(x, return_state=return_state, state=state)
        return ahead + self.backward_mixer(x.flip(1)).flip(1), after
