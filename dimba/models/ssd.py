"""Pure-PyTorch chunked SSD scan (Dao & Gu 2024, "Transformers are SSMs", Section 6 / Listing 1).

The selective state-space recurrence of Mamba-2, per head h with scalar decay a_t = exp(dt_t * A_h):

    S_t = a_t * S_{t-1} + dt_t * x_t B_t^T          S: (headdim, d_state)
    y_t = S_t C_t

is evaluated blockwise: inside each chunk of Q steps as matrix products (the "quadratic", attention-like
form with a decay mask), and between chunks by a recurrence over the chunk-final states only. Cost and
memory are linear in the sequence length; there is no Python loop over time steps (only over chunks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def segment_sum(x: Tensor) -> Tensor:
    """Stable pairwise segment sums of log-decays.

    Args:
        x: (..., Q) per-step log-decays.
    Returns:
        (..., Q, Q) with out[..., i, j] = sum_{k=j+1..i} x[..., k] for i >= j and -inf above the diagonal,
        so that exp(out) is the lower-triangular decay matrix. Summing masked copies (instead of
        differencing one cumsum) avoids catastrophic cancellation for long chunks.
    """
    q = x.shape[-1]
    x = x.unsqueeze(-1).expand(*x.shape, q)  # (..., Q, Q): x[..., i, j] = x_i
    strictly_lower = torch.ones(q, q, dtype=torch.bool, device=x.device).tril(-1)
    x = x.masked_fill(~strictly_lower, 0.0)
    sums = x.cumsum(dim=-2)
    lower = torch.ones(q, q, dtype=torch.bool, device=x.device).tril(0)
    return sums.masked_fill(~lower, float("-inf"))


def ssd_chunked_scan(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_size: int,
    initial_state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Run the SSD recurrence over a whole sequence, chunk by chunk.

    Args:
        x: (batch, L, nheads, headdim) inputs.
        dt: (batch, L, nheads) positive step sizes (softplus and limits already applied).
        A: (nheads,) negative decay rates.
        B, C: (batch, L, ngroups, d_state); heads are split evenly over groups.
        chunk_size: Q, the block length of the quadratic form. Any L is accepted.
        initial_state: optional (batch, nheads, headdim, d_state) state before the first step.
    Returns:
        y: (batch, L, nheads, headdim), without the D skip term.
        final_state: (batch, nheads, headdim, d_state) state after the last step.
    All inputs are expected in one floating dtype (the mixer passes fp32).
    """
    batch, length, nheads, headdim = x.shape
    ngroups, d_state = B.shape[2], B.shape[3]
    if nheads % ngroups:
        raise ValueError(f"nheads ({nheads}) must be divisible by ngroups ({ngroups})")
    B = B.repeat_interleave(nheads // ngroups, dim=2)  # (b, L, h, n)
    C = C.repeat_interleave(nheads // ngroups, dim=2)

    x_dt = x * dt.unsqueeze(-1)  # discretised input dt_t * x_t
    log_decay = dt * A  # (b, L, h)
    # Padding the end with dt = 0 is exact: decay exp(0) = 1 and zero input leave the state unchanged,
    # and padded outputs are dropped.
    pad = (-length) % chunk_size
    if pad:
        x_dt = F.pad(x_dt, (0, 0, 0, 0, 0, pad))
        log_decay = F.pad(log_decay, (0, 0, 0, pad))
        B = F.pad(B, (0, 0, 0, 0, 0, pad))
        C = F.pad(C, (0, 0, 0, 0, 0, pad))
    nchunks = (length + pad) // chunk_size
    q = chunk_size
    x_dt = x_dt.view(batch, nchunks, q, nheads, headdim)
    B = B.view(batch, nchunks, q, nheads, d_state)
    C = C.view(batch, nchunks, q, nheads, d_state)
    log_decay = log_decay.view(batch, nchunks, q, nheads).permute(0, 3, 1, 2)  # (b, h, c, q)
    cum_decay = log_decay.cumsum(dim=-1)  # (b, h, c, q)

    # 1. Within each chunk: y_i = sum_{j<=i} (C_i . B_j) exp(sum_{j<k<=i} log a_k) dt_j x_j.
    decay_matrix = torch.exp(segment_sum(log_decay))  # (b, h, c, q, q)
    scores = torch.einsum("bcihn,bcjhn->bhcij", C, B) * decay_matrix
    y_diag = torch.einsum("bhcij,bcjhp->bcihp", scores, x_dt)

    # 2. The state each chunk contributes by its end, starting from zero.
    decay_to_end = torch.exp(cum_decay[..., -1:] - cum_decay)  # (b, h, c, q)
    chunk_states = torch.einsum("bcjhn,bhcj,bcjhp->bchpn", B, decay_to_end, x_dt)

    # 3. Recurrence between chunks only (nchunks = L / Q iterations).
    chunk_decay = torch.exp(cum_decay[..., -1])  # (b, h, c)
    state = (
        x.new_zeros(batch, nheads, headdim, d_state) if initial_state is None else initial_state.to(x.dtype)
    )
    states_in = []
    for c in range(nchunks):
        states_in.append(state)
        state = state * chunk_decay[:, :, c, None, None] + chunk_states[:, c]
    states_in = torch.stack(states_in, dim=1)  # (b, c, h, p, n): state entering each chunk

    # 4. Contribution of the incoming state to every position of its chunk.
    y_off = torch.einsum("bcihn,bchpn,bhci->bcihp", C, states_in, torch.exp(cum_decay))

    y = (y_diag + y_off).reshape(batch, nchunks * q, nheads, headdim)[:, :length]
    return y, state
