"""An independent float64 Mamba-2 mixer: a plain loop over time steps, written from the paper's recurrence
and mamba-ssm's documented layout, sharing no code with dimba.models.mamba2."""

import torch
import torch.nn.functional as F


def reference_mamba2(m, u):
    """m: a dimba Mamba2 (only its parameters and hyper-parameters are read); u: (b, L, d_model)."""
    p = {k: v.double() for k, v in m.named_parameters()}
    u = u.double()
    b, L, _ = u.shape
    h, hd, n, g = m.nheads, m.headdim, m.d_state, m.ngroups
    d_ssm, d_inner = m.d_ssm, m.expand * m.d_model
    d_mlp = d_inner - d_ssm
    proj = u @ p["in_proj.weight"].T + (p["in_proj.bias"] if "in_proj.bias" in p else 0)
    z0, x0, z, xbc, dt = torch.split(proj, [d_mlp, d_mlp, d_ssm, d_ssm + 2 * g * n, h], dim=-1)

    # causal depthwise conv, window of d_conv ending at t
    w = p["conv1d.weight"][:, 0, :]  # (C, K)
    K = w.shape[1]
    padded = F.pad(xbc, (0, 0, K - 1, 0))
    conv = torch.stack([(padded[:, t:t + K, :] * w.T).sum(1) for t in range(L)], dim=1)
    if "conv1d.bias" in p:
        conv = conv + p["conv1d.bias"]
    conv = F.silu(conv)
    x, B, C = torch.split(conv, [d_ssm, g * n, g * n], dim=-1)
    x = x.view(b, L, h, hd)
    B = B.view(b, L, g, n)
    C = C.view(b, L, g, n)

    dt = F.softplus(dt + p["dt_bias"])
    lo, hi = m.dt_limit
    dt = dt.clamp(lo, hi)
    A = -torch.exp(p["A_log"])
    D = p["D"].view(h, hd) if m.D_has_hdim else p["D"][:, None].expand(h, hd)

    states = [torch.zeros(b, hd, n, dtype=torch.float64) for _ in range(h)]
    ys = []
    for t in range(L):
        y_heads = []
        for head in range(h):
            grp = head // (h // g)
            a = torch.exp(dt[:, t, head] * A[head])  # (b,)
            states[head] = a[:, None, None] * states[head] + (
                dt[:, t, head, None, None] * x[:, t, head, :, None] * B[:, t, grp, None, :])
            y_heads.append(torch.einsum("bpn,bn->bp", states[head], C[:, t, grp]) + D[head] * x[:, t, head])
        ys.append(torch.cat(y_heads, dim=-1))
    state = torch.stack(states, dim=1)
    y = torch.stack(ys, dim=1)

    if m.rmsnorm:
        gs = d_ssm // g
        gate = F.silu(z)
        if not m.norm_before_gate:
            y = y * gate
        yg = y.view(b, L, g, gs)
        yg = yg / torch.sqrt((yg ** 2).mean(-1, keepdim=True) + 1e-5)
        y = yg.reshape(b, L, d_ssm) * p["norm.weight"]
        if m.norm_before_gate:
            y = y * gate
    else:
        y = y * F.silu(z)
    if d_mlp:
        y = torch.cat([F.silu(z0) * x0, y], dim=-1)
    out = y @ p["out_proj.weight"].T + (p["out_proj.bias"] if "out_proj.bias" in p else 0)
    return out, state
