"""Training losses of the denoisers: the paper's x0 regression ||x0_hat - x0||^2 and the rounding
cross-entropy on the tied-projection logits (Diffusion-LM, Li et al. 2022, eq. 2), both over the noised
(non-prompt) positions only; and the ELBO-weighted cross-entropy of the discretely corrupted ones (MDLM)."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor


@dataclass
class DiffusionLoss:
    total: Tensor  # scalar, what is optimised
    mse: Tensor  # scalar, mean squared error per embedding coordinate
    ce: Tensor  # scalar, cross-entropy in nats per token
    accuracy: Tensor  # scalar, argmax accuracy of the tied projection
    per_example_ce: Tensor  # (B,), for the time warp


def diffusion_loss(logits: Tensor, x0_hat: Tensor, x0: Tensor, tokens: Tensor, loss_mask: Tensor,
                   mse_weight: float = 1.0, ce_weight: float = 1.0) -> DiffusionLoss:
    """logits (B, L, V), x0_hat and x0 (B, L, De), tokens (B, L), loss_mask (B, L) bool."""
    mask = loss_mask.float()
    per_example_count = mask.sum(1).clamp(min=1)
    count = mask.sum().clamp(min=1)
    mse_tok = (x0_hat.float() - x0.float()).pow(2).mean(-1)  # (B, L)
    ce_tok = F.cross_entropy(logits.float().transpose(1, 2), tokens, reduction="none")  # (B, L)
    correct = (logits.argmax(-1) == tokens).float()
    mse = (mse_tok * mask).sum() / count
    ce = (ce_tok * mask).sum() / count
    total = mse_weight * mse + ce_weight * ce
    return DiffusionLoss(total=total, mse=mse, ce=ce, accuracy=(correct * mask).sum() / count,
                         per_example_ce=(ce_tok * mask).sum(1) / per_example_count)


def elbo_cross_entropy(logits: Tensor, tokens: Tensor, corrupted: Tensor, generated: Tensor, t: Tensor) -> Tensor:
    """The negative ELBO of masked (or hybrid) diffusion with alpha_t = 1 - t, per generated token, averaged
    over the batch: sum over corrupted positions of CE / t, divided by the example's generated count (MDLM,
    Sahoo et al. 2024, eq. 10). logits (B, L, V); tokens, corrupted, generated (B, L); t (B,)."""
    ce = F.cross_entropy(logits.float().transpose(1, 2), tokens, reduction="none")  # (B, L)
    return ((ce * corrupted).sum(1) / t / generated.sum(1).clamp(min=1)).mean()
