"""Where a diffusion model decides tokens: the true token's rank under the noise of each level t (CANDI's
"continuous rank degradation" and "discrete identity corruption", measured on the model's own embeddings), and
the model's token accuracy / cross-entropy at each t. For models that noise embeddings (DIMBA, either
corruption); `dimba eval --diagnose` writes them to results.json."""

from __future__ import annotations

import torch
from torch import Tensor

from dimba.training.validation import per_example_draws

DIAGNOSE_TIMES = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 1.0)


@torch.no_grad()
def noise_rank(model, tokens: Tensor, times=DIAGNOSE_TIMES) -> list[dict]:
    """For each t: the mean share of the vocabulary nearer to the noised embedding than the true token (0: it
    is the nearest; 0.5: no information), the share of tokens whose nearest embedding is the true one, and the
    model's accuracy and cross-entropy there (every generated position corrupted, no prompt).

    tokens: (B, L) held-out blocks."""
    table = model.net.embedding_table()
    B, L_ = tokens.shape
    x0 = table[tokens]
    noise = per_example_draws(tokens, L_, table.shape[1])
    rows = []
    for t in times:
        t_batch = torch.full((B,), float(t), device=tokens.device)
        x_t = model.schedule.q_sample(x0, t_batch, noise)
        dist = torch.cdist(x_t.flatten(0, 1), table)  # (B L, V)
        true = dist.gather(1, tokens.flatten()[:, None])
        rank = (dist < true).float().mean(1)
        nearest = (dist.argmin(1) == tokens.flatten()).float().mean()
        out = model.denoising_loss(tokens, t_batch, torch.zeros_like(tokens, dtype=torch.bool), None, 0.0, noise,
                                   uniforms=torch.zeros(B, L_, device=tokens.device))  # every position corrupted
        rows.append({"t": float(t), "abar": float(model.schedule.alpha_bar(torch.tensor(float(t)))),
                     "true_token_rank_share": float(rank.mean()), "nearest_is_true": float(nearest),
                     "model_accuracy": float(out.metrics["acc"]), "model_ce": float(out.metrics["ce"])})
    return rows
