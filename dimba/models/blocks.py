"""Pre-norm residual blocks: norm -> modulate -> mixer -> gate -> residual (DiT's adaLN-Zero, Peebles &
Xie 2023), or additive conditioning, with an optional MLP sublayer."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dimba.models.bidirectional import BidirectionalMamba2
from dimba.models.config import CONDITIONINGS
from dimba.models.mamba2 import Mamba2, Mamba2State
from dimba.precision import upcast


@dataclass
class BlockState:
    """What block generation carries: each layer's left-to-right mixer state (None before the first block); for the
    DIMBA denoiser also the prompt's encoding (B, d_model) and whether the prompt is dropped (B,) (one state per
    guidance branch)."""

    layers: list[Mamba2State | None]
    prompt_c: Tensor | None = None
    drop_prompt: Tensor | None = None


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32 whatever the input dtype (bf16 loses too much in the mean of squares)."""

    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: Tensor) -> Tensor:
        x32 = upcast(x)
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps) * upcast(self.weight)
        return y.to(x.dtype)


class MLP(nn.Module):
    """SwiGLU feed-forward sublayer: (..., d) -> (..., d)."""

    def __init__(self, d_model: int, ratio: float):
        super().__init__()
        hidden = int(ratio * d_model)
        self.gate_up = nn.Linear(d_model, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class MambaBlock(nn.Module):
    """One residual block over (B, L, d_model), conditioned on c: (B, d_cond) or unconditioned (c=None).

    conditioning="film": shift, scale and gate per sublayer from a zero-initialised linear map of c, so the
    block starts as the identity (adaLN-Zero). conditioning="additive": a zero-initialised projection of c
    is added to the normalised input of each sublayer. `bidirectional=False` gives the causal block of the
    autoregressive baseline.
    """

    def __init__(self, d_model: int, d_cond: int | None = None, conditioning: str = "film",
                 bidirectional: bool = True, mlp_ratio: float = 0.0, **mamba_kwargs):
        super().__init__()
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {CONDITIONINGS}, got {conditioning!r}")
        self.conditioning = conditioning if d_cond else None
        self.norm1 = RMSNorm(d_model)
        self.mixer = (BidirectionalMamba2(d_model, **mamba_kwargs) if bidirectional
                      else Mamba2(d_model, **mamba_kwargs))
        self.norm2 = RMSNorm(d_model) if mlp_ratio > 0 else None
        self.mlp = MLP(d_model, mlp_ratio) if mlp_ratio > 0 else None
        n_sub = 2 if self.mlp is not None else 1
        self.per_sub = 3 if conditioning == "film" else 1  # (shift, scale, gate) or one additive vector
        if self.conditioning is not None:
            self.modulation = nn.Linear(d_cond, self.per_sub * n_sub * d_model)
            # Zero init: no modulation and a zero gate, so the block is the identity at the start.
            nn.init.zeros_(self.modulation.weight)
            nn.init.zeros_(self.modulation.bias)

    def _modulations(self, c: Tensor | None, dtype: torch.dtype) -> list[Tensor]:
        """The (shift, scale, gate) or additive vectors of every sublayer, each (B, d_model), from c (B, d_cond)."""
        if self.conditioning is None:
            return []
        mods = self.modulation(F.silu(c)).to(dtype)
        return list(mods.chunk(self.modulation.out_features // self.norm1.weight.shape[0], dim=-1))

    def _modulate(self, h: Tensor, mods: list[Tensor]) -> Tensor:
        """The normalised input h (B, L, D) as the sublayer reads it."""
        if self.conditioning == "film":
            shift, scale, _ = mods
            return h * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)
        if self.conditioning == "additive":
            return h + mods[0].unsqueeze(1)
        return h

    def _residual(self, x: Tensor, y: Tensor, mods: list[Tensor]) -> Tensor:
        """x plus the sublayer's output y, gated by adaLN-Zero's gate."""
        return x + (mods[2].unsqueeze(1) * y if self.conditioning == "film" else y)

    def _sublayer(self, x: Tensor, norm: nn.Module, fn, mods: list[Tensor]) -> Tensor:
        return self._residual(x, fn(self._modulate(norm(x), mods)), mods)

    def _mlp(self, x: Tensor, mods: list[Tensor]) -> Tensor:
        return x if self.mlp is None else self._sublayer(x, self.norm2, self.mlp, mods[self.per_sub:])

    def forward(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        """x: (B, L, d_model); c: (B, d_cond) -> (B, L, d_model)."""
        mods = self._modulations(c, x.dtype)
        x = self._sublayer(x, self.norm1, self.mixer, mods[:self.per_sub])
        return self._mlp(x, mods)

    # Block diffusion (bidirectional blocks): two streams in training, a carried state in generation.
    def two_stream(self, clean: Tensor, c_clean: Tensor | None, noisy: Tensor, c_noisy: Tensor | None, block: int
                   ) -> tuple[Tensor, Tensor]:
        """clean (B, L, D) conditioned on c_clean (B, d_cond); noisy (B * n_blocks, block, D) on c_noisy
        (B * n_blocks, d_cond) -> both streams after this block (`BidirectionalMamba2.two_stream`)."""
        mods_c, mods_n = self._modulations(c_clean, clean.dtype), self._modulations(c_noisy, noisy.dtype)
        y_c, y_n = self.mixer.two_stream(self._modulate(self.norm1(clean), mods_c[:self.per_sub]),
                                         self._modulate(self.norm1(noisy), mods_n[:self.per_sub]), block)
        clean = self._mlp(self._residual(clean, y_c, mods_c[:self.per_sub]), mods_c)
        noisy = self._mlp(self._residual(noisy, y_n, mods_n[:self.per_sub]), mods_n)
        return clean, noisy

    def block_from(self, x: Tensor, c: Tensor | None, state: Mamba2State | None, return_state: bool = False
                   ) -> tuple[Tensor, Mamba2State | None]:
        """One block x (B, n, D) after what `state` summarises: (output, and if asked the mixer's state after it)."""
        mods = self._modulations(c, x.dtype)
        y, after = self.mixer.block_from(self._modulate(self.norm1(x), mods[:self.per_sub]), state, return_state)
        return self._mlp(self._residual(x, y, mods[:self.per_sub]), mods), after

    # Recurrent decoding (causal, unconditioned blocks only: the autoregressive baseline).
    def prefill(self, x: Tensor) -> tuple[Tensor, Mamba2State]:
        """x: (B, L, d_model) -> output (B, L, d_model) and the mixer's state after the last position."""
        y, state = self.mixer.prefill(self.norm1(x))
        x = x + y
        if self.mlp is not None:
            x = x + self.mlp(self.norm2(x))
        return x, state

    def step(self, x: Tensor, state: Mamba2State) -> tuple[Tensor, Mamba2State]:
        """x: (B, d_model), one position -> (B, d_model) and the next state."""
        y, state = self.mixer.step(self.norm1(x), state)
        x = x + y
        if self.mlp is not None:
            x = x + self.mlp(self.norm2(x))
        return x, state
