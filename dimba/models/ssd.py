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


def ssd_chunked_scan(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_size: int,
    initial_state: Tensor | None = None,
    state_every: int = 0,
) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]:
    """Run the SSD recurrence over a whole sequence, chunk by chunk.

    Args:
        x: (batch, L, nheads, headdim) inputs.
        dt: (batch, L, nheads) positive step sizes (softplus and limits already applied).
        A: (nheads,) negative decay rates.
        B, C: (batch, L, ngroups, d_state); heads are split evenly over groups.
        chunk_size: Q, the block length of the quadratic form. Any L is accepted.
        initial_state: optional (batch, nheads, headdim, d_state) state before the first step.
        state_every: > 0: also return the state before positions 0, s, 2s, ... (block diffusion's block starts);
            s must divide chunk_size or be a multiple of it.
    Returns:
        y: (batch, L, nheads, headdim), without the D skip term.
        final_state: (batch, nheads, headdim, d_state) state after the last step.
        starts (with state_every s): (batch, ceil(L / s), nheads, headdim, d_state), the state before position j s.
    All inputs are expected in one floating dtype (the mixer passes fp32).
    """
    batch, length, nheads, headdim = x.shape
    ngroups, d_state = B.shape[2], B.shape[3]
    if nheads % ngroups:
        raise ValueError(f"nheads ({nheads}) must be divisible by ngroups ({ngroups})")
    per_group = nheads // ngroups

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
    nchunks, q = (length + pad) // chunk_size, chunk_size
    # Heads are indexed as (group, head-in-group) so that B and C are never copied per head.
    x_dt = x_dt.view(batch, nchunks, q, ngroups, per_group, headdim)
    B = B.view(batch, nchunks, q, ngroups, d_state)
    C = C.view(batch, nchunks, q, ngroups, d_state)
    cum = log_decay.view(batch, nchunks, q, ngroups, per_group).cumsum(dim=2)  # (b, c, q, g, k)

    # 1. Within each chunk: y_i = sum_{j<=i} (C_i . B_j) exp(cum_i - cum_j) dt_j x_j. C_i . B_j is shared
    #    by all heads of a group, so it is computed once per group (the costly q^2 d_state product).
    scores = torch.einsum("bcign,bcjgn->bcgij", C, B)  # (b, c, g, q, q)
    cum_h = cum.permute(0, 1, 3, 4, 2)  # (b, c, g, k, q)
    causal = torch.ones(q, q, dtype=torch.bool, device=x.device).tril()
    decay = torch.exp((cum_h.unsqueeze(-1) - cum_h.unsqueeze(-2)).masked_fill(~causal, float("-inf")))
    y_diag = torch.einsum("bcgkij,bcjgkp->bcigkp", scores.unsqueeze(3) * decay, x_dt)

    # 2. The state each chunk contributes by its end, starting from zero.
    decay_to_end = torch.exp(cum[:, :, -1:] - cum)  # (b, c, q, g, k)
    chunk_states = torch.einsum("bcjgn,bcjgkp->bcgkpn", B, x_dt * decay_to_end.unsqueeze(-1))

    # 3. Recurrence between chunks only (L / Q iterations, not L).
    chunk_decay = torch.exp(cum[:, :, -1])  # (b, c, g, k)
    state = x.new_zeros(batch, ngroups, per_group, headdim, d_state) if initial_state is None else \
        initial_state.to(x.dtype).view(batch, ngroups, per_group, headdim, d_state)
    states_in = []
    for c in range(nchunks):
        states_in.append(state)
        state = state * chunk_decay[:, c, :, :, None, None] + chunk_states[:, c]
    states_in = torch.stack(states_in, dim=1)  # (b, c, g, k, p, n): the state entering each chunk

    # 4. Contribution of the incoming state to every position of its chunk.
    y_off = torch.einsum("bcign,bcgkpn->bcigkp", C, states_in) * torch.exp(cum).unsqueeze(-1)

    y = (y_diag + y_off).reshape(batch, nchunks * q, nheads, headdim)[:, :length]
    final = state.reshape(batch, nheads, headdim, d_state)
    if not state_every:
        return y, final
    if state_every % q == 0:
        starts = states_in[:, ::state_every // q]
    elif q % state_every == 0:
        # Several starts per chunk: S_e = exp(cum_e) S_in + sum_{j <= e} exp(cum_e - cum_j) B_j (dt x)_j, at the
        # positions e just before each start inside the chunk.
        ends = torch.arange(state_every - 1, q - 1, state_every, device=x.device)  # (r - 1,)
        cum_e = cum[:, :, ends]  # (b, c, r - 1, g, k)
        upto = torch.arange(q, device=x.device)[None, :] <= ends[:, None]  # (r - 1, q)
        decay_e = torch.exp((cum_e.unsqueeze(3) - cum.unsqueeze(2)).masked_fill(~upto[:, :, None, None], float("-inf")))
        inside = torch.einsum("bcejgk,bcjgn,bcjgkp->bcegkpn", decay_e, B, x_dt)
        later = torch.exp(cum_e)[..., None, None] * states_in.unsqueeze(2) + inside  # (b, c, r - 1, g, k, p, n)
        starts = torch.cat([states_in.unsqueeze(2), later], dim=2).flatten(1, 2)
    else:
        raise ValueError(f"state_every ({state_every}) must divide the chunk size ({q}) or be a multiple of it")
    n_starts = -(-length // state_every)
    return y, final, starts[:, :n_starts].reshape(batch, n_starts, nheads, headdim, d_state)
