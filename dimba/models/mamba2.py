"""The Mamba-2 mixer (Dao & Gu 2024, "Transformers are SSMs: ... Structured State Space Duality").

One module, one set of parameters with exactly mamba-ssm's names and shapes
(`mamba_ssm.modules.mamba2.Mamba2`), and two forward paths chosen at call time:

- `impl="torch"`: pure PyTorch, the chunked SSD scan of `dimba.models.ssd`, runs anywhere.
- `impl="cuda"`: mamba-ssm's Triton kernels (fused with causal-conv1d when it is installed).
- `impl="auto"`: cuda for CUDA tensors when mamba-ssm imports, else torch (logged once).

So a checkpoint trained on one path loads into the other with `strict=True`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dimba.models.config import IMPLS
from dimba.models.kernels import announce_impl, mamba_kernels
from dimba.models.ssd import ssd_chunked_scan
from dimba.precision import upcast


def no_weight_decay(param: nn.Parameter) -> nn.Parameter:
    """Flag a parameter to be excluded from weight decay (read by the optimizer set-up)."""
    param._no_weight_decay = True
    return param


def causal_depthwise_conv(x: Tensor, weight: Tensor, bias: Tensor | None, left: Tensor | None = None) -> Tensor:
    """Causal depthwise conv as d_conv shifted multiply-adds: y_t = sum_k w[:, k] x_{t - K + 1 + k} + b.

    x: (batch, L, channels); weight: (channels, 1, K) as nn.Conv1d stores it; left: optional (batch, K - 1,
    channels) inputs before x (a carried state; zeros if None). Same function as the padded nn.Conv1d, but several
    times cheaper than oneDNN's depthwise-conv backward on CPU for small K.
    """
    kernel = weight.shape[-1]
    length = x.shape[1]
    padded = F.pad(x, (0, 0, kernel - 1, 0)) if left is None else torch.cat([left.to(x.dtype), x], dim=1)
    y = sum(padded[:, k:k + length] * weight[:, 0, k] for k in range(kernel))
    return y if bias is None else y + bias


class GatedRMSNorm(nn.Module):
    """Grouped RMSNorm with a SiLU gate, as mamba-ssm's `layernorm_gated.RMSNorm` (parameter `weight`).

    norm_before_gate=False: y = rmsnorm(x * silu(z)) * weight; True: y = rmsnorm(x) * weight * silu(z).
    The RMS is taken over groups of `group_size` channels. Computed in fp32 whatever the input dtype.
    """

    def __init__(self, d: int, eps: float = 1e-5, norm_before_gate: bool = False, group_size: int | None = None,
                 device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.norm_before_gate = norm_before_gate
        self.group_size = group_size or d
        self.weight = nn.Parameter(torch.ones(d, device=device, dtype=dtype))

    def forward(self, x: Tensor, z: Tensor | None = None) -> Tensor:
        """x, z: (..., d) -> (..., d) in fp32."""
        x = upcast(x)
        gate = None if z is None else F.silu(upcast(z))
        if gate is not None and not self.norm_before_gate:
            x = x * gate
        grouped = x.unflatten(-1, (-1, self.group_size))
        grouped = grouped * torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + self.eps)
        y = grouped.flatten(-2) * upcast(self.weight)
        if gate is not None and self.norm_before_gate:
            y = y * gate
        return y


@dataclass
class Mamba2State:
    """Recurrent state of one mixer, laid out as mamba-ssm's inference cache.

    conv: (batch, conv_dim, d_conv) the last d_conv pre-convolution inputs.
    ssm: (batch, nheads, headdim, d_state) the SSM state, kept in fp32.
    """

    conv: Tensor
    ssm: Tensor


class Mamba2(nn.Module):
    """Mamba-2 mixer: (batch, L, d_model) -> (batch, L, d_model), causal over L.

    Fused input projection order: [z0, x0, z, xBC, dt] with widths [d_mlp, d_mlp, d_ssm,
    d_ssm + 2 * ngroups * d_state, nheads], where d_mlp = d_inner - d_ssm feeds an optional gated MLP
    beside the SSM (zero when d_ssm is None).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 128,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        d_ssm: int | None = None,
        ngroups: int = 1,
        A_init_range: tuple[float, float] = (1, 16),
        D_has_hdim: bool = False,
        rmsnorm: bool = True,
        norm_before_gate: bool = False,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        dt_limit: tuple[float, float] = (0.0, float("inf")),
        bias: bool = False,
        conv_bias: bool = True,
        chunk_size: int = 256,
        layer_idx: int | None = None,
        impl: str = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__()
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        factory = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = expand * d_model
        self.headdim = headdim
        self.d_ssm = self.d_inner if d_ssm is None else d_ssm
        if self.d_ssm > self.d_inner:
            raise ValueError(f"d_ssm ({self.d_ssm}) cannot exceed expand * d_model ({self.d_inner})")
        if self.d_ssm % headdim:
            raise ValueError(f"d_ssm ({self.d_ssm}) must be a multiple of headdim ({headdim})")
        self.nheads = self.d_ssm // headdim
        if self.nheads % ngroups:
            raise ValueError(f"nheads ({self.nheads}) must be divisible by ngroups ({ngroups})")
        self.ngroups = ngroups
        self.d_mlp = self.d_inner - self.d_ssm
        self.D_has_hdim, self.rmsnorm, self.norm_before_gate = D_has_hdim, rmsnorm, norm_before_gate
        self.dt_limit = tuple(dt_limit)
        self.chunk_size, self.layer_idx, self.impl = chunk_size, layer_idx, impl

        d_in_proj = 2 * self.d_inner + 2 * ngroups * d_state + self.nheads
        self.in_proj = nn.Linear(d_model, d_in_proj, bias=bias, **factory)
        self.conv_dim = self.d_ssm + 2 * ngroups * d_state
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, kernel_size=d_conv, groups=self.conv_dim,
                                padding=d_conv - 1, bias=conv_bias, **factory)

        # dt log-uniform in [dt_min, dt_max], stored through the inverse softplus so that
        # softplus(dt_bias) = dt at initialisation.
        dt = torch.exp(torch.rand(self.nheads, device=device) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=dt_init_floor)
        self.dt_bias = no_weight_decay(nn.Parameter((dt + torch.log(-torch.expm1(-dt))).to(dtype)))
        if not (A_init_range[0] > 0 and A_init_range[1] >= A_init_range[0]):
            raise ValueError(f"A_init_range must satisfy 0 < lo <= hi, got {A_init_range}")
        A = torch.empty(self.nheads, device=device).uniform_(*A_init_range)
        self.A_log = no_weight_decay(nn.Parameter(torch.log(A).to(dtype)))
        self.D = no_weight_decay(nn.Parameter(torch.ones(self.d_ssm if D_has_hdim else self.nheads, **factory)))
        if rmsnorm:
            self.norm = GatedRMSNorm(self.d_ssm, eps=1e-5, norm_before_gate=norm_before_gate,
                                     group_size=self.d_ssm // ngroups, **factory)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    # ------------------------------------------------------------------ helpers shared by both paths
    def _split(self, zxbcdt: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        return torch.split(zxbcdt, [self.d_mlp, self.d_mlp, self.d_ssm, self.conv_dim, self.nheads], dim=-1)

    def _D(self) -> Tensor:
        """D as (nheads,) or (nheads, headdim)."""
        return self.D.view(self.nheads, self.headdim) if self.D_has_hdim else self.D

    def _skip(self, x: Tensor) -> Tensor:
        """The D skip term for x (..., nheads, headdim), in fp32."""
        D = upcast(self._D())
        return x * (D.unsqueeze(-1) if D.dim() == 1 else D)

    def _dt(self, dt: Tensor) -> Tensor:
        """Raw dt (..., nheads) -> softplus(dt + bias) clamped to dt_limit, in fp32."""
        dt = F.softplus(upcast(dt) + upcast(self.dt_bias))
        if self.dt_limit != (0.0, float("inf")):
            dt = dt.clamp(*self.dt_limit)
        return dt

    def _finish(self, y: Tensor, z: Tensor | None, z0: Tensor, x0: Tensor, dtype: torch.dtype) -> Tensor:
        """Gate / norm the SSM output y (..., d_ssm), prepend the gated MLP part, project out.

        z=None means the gate was already applied (mamba-ssm's scan kernel does it when rmsnorm is off).
        """
        if self.rmsnorm:
            y = self.norm(y, z)
        elif z is not None:
            y = upcast(y) * F.silu(upcast(z))
        if self.d_mlp:
            y = torch.cat([upcast(F.silu(z0) * x0), y], dim=-1)
        return self.out_proj(y.to(dtype))

    def _conv_state(self, xBC: Tensor, state: Mamba2State | None) -> Tensor:
        """The last d_conv pre-conv inputs after xBC (b, L, conv_dim), continuing `state`, as (b, conv_dim, d_conv)."""
        before = state.conv if state is not None else xBC.new_zeros(xBC.shape[0], self.conv_dim, self.d_conv)
        return torch.cat([before.to(xBC.dtype), xBC.transpose(1, 2)], dim=-1)[..., -self.d_conv:]

    def _conv_left(self, state: Mamba2State | None) -> Tensor | None:
        """The d_conv - 1 pre-conv inputs before the next position, (b, d_conv - 1, conv_dim), or None (zeros)."""
        return None if state is None else state.conv[..., 1:].transpose(1, 2)

    def resolve_impl(self, x: Tensor) -> str:
        """The path this call takes: "torch" or "cuda"."""
        if self.impl == "torch":
            return "torch"
        kernels_ok = mamba_kernels() is not None
        if self.impl == "cuda":
            if not x.is_cuda:
                raise RuntimeError("impl='cuda' needs CUDA tensors; use impl='auto' or 'torch' on CPU")
            if not kernels_ok:
                raise RuntimeError("impl='cuda' needs mamba-ssm (`make install-cuda`); it did not import")
            return "cuda"
        choice = "cuda" if x.is_cuda and kernels_ok else "torch"
        if torch.compiler.is_compiling():  # logging inside a traced region would break the graph
            return choice
        if choice == "cuda":
            reason = "CUDA tensors and mamba-ssm available"
        else:
            reason = "CUDA tensors" if x.is_cuda else "CPU tensors"
            reason += "" if kernels_ok else ", mamba-ssm not importable"
        announce_impl(choice, reason)
        return choice

    # ------------------------------------------------------------------ full-sequence forward
    def forward(self, u: Tensor) -> Tensor:
        """u: (batch, L, d_model) -> (batch, L, d_model)."""
        return self.prefill(u, return_state=False)[0]

    def prefill(self, u: Tensor, return_state: bool = True, state: Mamba2State | None = None
                ) -> tuple[Tensor, Mamba2State | None]:
        """Run over u: (batch, L, d_model), continuing from `state` (the state after what came before; None: the
        start of a sequence); return the output and, if asked, the state after u."""
        if self.resolve_impl(u) == "cuda":
            return self._forward_cuda(u, return_state, state)
        out, final, _ = self._forward_torch(u, return_state, state)
        return out, final

    def _forward_torch(self, u: Tensor, return_state: bool, state: Mamba2State | None = None, block: int = 0
                       ) -> tuple[Tensor, Mamba2State | None, Mamba2State | None]:
        """(output, the state after u if asked, and with `block` > 0 the state at the start of every block of u,
        as a batch of (batch * n_blocks) states)."""
        batch, length, _ = u.shape
        z0, x0, z, xBC, dt = self._split(self.in_proj(u))
        conv_state = self._conv_state(xBC, state) if return_state else None
        xBC_raw = xBC
        xBC = F.silu(causal_depthwise_conv(xBC, self.conv1d.weight, self.conv1d.bias, self._conv_left(state)))
        x, B, C = torch.split(xBC, [self.d_ssm, self.ngroups * self.d_state, self.ngroups * self.d_state], -1)
        # The scan runs in fp32 even under bf16 autocast: exp of cumulative decays and long sums of
        # outer products lose too much in bf16. With blocks, chunks must tile them so that every block start is
        # a chunk start (the output does not depend on the chunk size).
        # A sequence shorter than a chunk is one chunk of its own length: padding it to chunk_size would multiply
        # the work (block diffusion's noisy stream is many short rows). With blocks, the chunks and the blocks
        # must nest (the state at each block start is read off the chunked scan).
        chunk = min(self.chunk_size, length)
        if block and chunk % block and block % chunk:
            chunk = math.gcd(chunk, block)
        with torch.autocast(u.device.type, enabled=False):
            x = upcast(x).view(batch, length, self.nheads, self.headdim)
            y, ssm_state, *chunk_states = ssd_chunked_scan(
                x, self._dt(dt), -torch.exp(upcast(self.A_log)),
                upcast(B).view(batch, length, self.ngroups, self.d_state),
                upcast(C).view(batch, length, self.ngroups, self.d_state), chunk,
                initial_state=None if state is None else state.ssm, state_every=block)
            y = y + self._skip(x)
        out = self._finish(y.reshape(batch, length, self.d_ssm), z, z0, x0, z.dtype)
        starts = None
        if block:
            ssm = chunk_states[0].flatten(0, 1)  # (batch * n_blocks, h, p, n)
            # The d_conv pre-conv inputs before each block start: windows of the front-padded inputs.
            padded = torch.cat([self._conv_state(xBC_raw[:, :0], state), xBC_raw.transpose(1, 2)], dim=-1)
            conv = padded.unfold(-1, self.d_conv, block)[:, :, :length // block]  # (b, conv_dim, n_blocks, d_conv)
            starts = Mamba2State(conv.transpose(1, 2).flatten(0, 1), ssm)
        return out, (Mamba2State(conv_state, ssm_state) if return_state else None), starts

    def _forward_cuda(self, u: Tensor, return_state: bool, state: Mamba2State | None = None
                      ) -> tuple[Tensor, Mamba2State | None]:
        k = mamba_kernels()
        batch, length, _ = u.shape
        zxbcdt = self.in_proj(u)
        A = -torch.exp(upcast(self.A_log))
        limit = {} if self.dt_limit == (0.0, float("inf")) else {"dt_limit": self.dt_limit}
        if k.causal_conv1d_fn is not None and self.d_mlp == 0 and not return_state and state is None:
            out = k.split_conv1d_scan(
                zxbcdt, self.conv1d.weight.squeeze(1), self.conv1d.bias, self.dt_bias, A, D=self._D(),
                chunk_size=self.chunk_size, activation="silu",
                rmsnorm_weight=self.norm.weight if self.rmsnorm else None,
                rmsnorm_eps=self.norm.eps if self.rmsnorm else 1e-6,
                outproj_weight=self.out_proj.weight, outproj_bias=self.out_proj.bias,
                headdim=None if self.D_has_hdim else self.headdim, ngroups=self.ngroups,
                norm_before_gate=self.norm_before_gate, **limit)
            return out, None
        z0, x0, z, xBC, dt = self._split(zxbcdt)
        conv_state = self._conv_state(xBC, state) if return_state else None
        if k.causal_conv1d_fn is not None and state is None:
            xBC = k.causal_conv1d_fn(xBC.transpose(1, 2), self.conv1d.weight.squeeze(1), bias=self.conv1d.bias,
                                     activation="silu").transpose(1, 2)
        else:  # a carried conv tail: the plain depthwise conv over it (d_conv multiply-adds)
            xBC = F.silu(causal_depthwise_conv(xBC, self.conv1d.weight, self.conv1d.bias, self._conv_left(state)))
        x, B, C = torch.split(xBC, [self.d_ssm, self.ngroups * self.d_state, self.ngroups * self.d_state], -1)
        result = k.chunk_scan(
            x.view(batch, length, self.nheads, self.headdim), dt, A,
            B.view(batch, length, self.ngroups, self.d_state), C.view(batch, length, self.ngroups, self.d_state),
            chunk_size=self.chunk_size, D=self._D(), z=None if self.rmsnorm else z.view(*x.shape[:2], self.nheads,
                                                                                         self.headdim),
            dt_bias=self.dt_bias, dt_softplus=True, return_final_states=return_state,
            initial_states=None if state is None else state.ssm.to(x.dtype), **limit)
        y, ssm_state = result if return_state else (result, None)
        if not self.rmsnorm:  # the kernel already applied the z gate
            z = None
        out = self._finish(y.reshape(batch, length, self.d_ssm), z, z0, x0, zxbcdt.dtype)
        return out, (Mamba2State(conv_state, upcast(ssm_state)) if return_state else None)

    # ------------------------------------------------------------------ block diffusion: two streams
    def two_stream(self, clean: Tensor, noisy: Tensor, block: int) -> tuple[Tensor, Tensor]:
        """The training pass of block diffusion (BD3-LM's two streams, with the SSM state as the cache).

        clean: (b, L, d_model), L a multiple of `block`: causal over the whole sequence, as `forward`.
        noisy: (b * n_blocks, block, d_model), each row a block's corrupted version: it starts from the state the
            clean stream has at that block's start (the SSM state and the conv tail of the clean inputs before
            it), so no block sees itself clean, nor anything after it.
        Returns (clean output (b, L, d_model), noisy output (b * n_blocks, block, d_model)).
        The clean stream runs the torch scan, which gives the state at every chunk start; the noisy stream takes
        the CUDA kernels when `impl` allows (they take initial states).
        """
        y_clean, _, starts = self._forward_torch(clean, return_state=False, block=block)
        return y_clean, self.prefill(noisy, return_state=False, state=starts)[0]

    # ------------------------------------------------------------------ recurrent decoding
    def empty_state(self, batch: int, device=None, dtype=None) -> Mamba2State:
        """The state before any token: zeros."""
        device = device or self.out_proj.weight.device
        dtype = dtype or self.conv1d.weight.dtype
        return Mamba2State(torch.zeros(batch, self.conv_dim, self.d_conv, device=device, dtype=dtype),
                           torch.zeros(batch, self.nheads, self.headdim, self.d_state, device=device))

    def step(self, u: Tensor, state: Mamba2State) -> tuple[Tensor, Mamba2State]:
        """One token: u (batch, d_model) -> (batch, d_model) and the next state (inputs are not modified)."""
        z0, x0, z, xBC, dt = self._split(self.in_proj(u))
        conv = torch.cat([state.conv[..., 1:], xBC.unsqueeze(-1).to(state.conv.dtype)], dim=-1)
        xBC = (conv * self.conv1d.weight.squeeze(1)).sum(-1)
        if self.conv1d.bias is not None:
            xBC = xBC + self.conv1d.bias
        xBC = F.silu(xBC)
        x, B, C = torch.split(xBC, [self.d_ssm, self.ngroups * self.d_state, self.ngroups * self.d_state], -1)
        with torch.autocast(u.device.type, enabled=False):
            dt = self._dt(dt)  # (b, h)
            decay = torch.exp(dt * -torch.exp(upcast(self.A_log)))  # (b, h)
            x = upcast(x).view(-1, self.nheads, self.headdim)
            per_head = self.nheads // self.ngroups
            B = upcast(B).view(-1, self.ngroups, self.d_state).repeat_interleave(per_head, dim=1)
            C = upcast(C).view(-1, self.ngroups, self.d_state).repeat_interleave(per_head, dim=1)
            ssm = upcast(state.ssm) * decay[..., None, None] + (dt[..., None] * x)[..., None] * B[:, :, None, :]
            y = torch.einsum("bhpn,bhn->bhp", ssm, C)
            y = (y + self._skip(x)).flatten(1)
        return self._finish(y, z, z0, x0, z.dtype), Mamba2State(conv, ssm)
