"""Training losses of the denoiser: the paper's x0 regression ||x0_hat - x0||^2 and the rounding
cross-entropy on the tied-projection logits (Diffusion-LM, Li et al. 2022, eq. 2), both over the noised
(non-prompt) positions only."""

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
