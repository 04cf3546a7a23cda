"""Pre-norm residual blocks: norm -> modulate -> mixer -> gate -> residual (DiT's adaLN-Zero, Peebles &
Xie 2023), or additive conditioning, with an optional MLP sublayer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dimba.models.bidirectional import BidirectionalMamba2
from dimba.models.config import CONDITIONINGS
from dimba.models.mamba2 import Mamba2, Mamba2State
from dimba.precision import upcast


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

    def _sublayer(self, x: Tensor, norm: nn.Module, fn: nn.Module, mods: list[Tensor]) -> Tensor:
        h = norm(x)
        if self.conditioning == "film":
            shift, scale, gate = mods
            return x + gate.unsqueeze(1) * fn(h * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1))
        if self.conditioning == "additive":
            return x + fn(h + mods[0].unsqueeze(1))
        return x + fn(h)

    def forward(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        """x: (B, L, d_model); c: (B, d_cond) -> (B, L, d_model)."""
        mods: list[Tensor] = []
        if self.conditioning is not None:
            mods = list(self.modulation(F.silu(c)).to(x.dtype).chunk(self.modulation.out_features
                                                                       // x.shape[-1], dim=-1))
        x = self._sublayer(x, self.norm1, self.mixer, mods[:self.per_sub])
        if self.mlp is not None:
            x = self._sublayer(x, self.norm2, self.mlp, mods[self.per_sub:])
        return x

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
