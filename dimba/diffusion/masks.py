"""Which positions of a training example are given (clean prompt) and which the model must generate."""

from __future__ import annotations

import torch
from torch import Tensor

from dimba.diffusion.config import PromptConfig


def random_prefix_mask(batch: int, length: int, prompt_prob: float, max_prompt_frac: float,
                       device: torch.device | str = "cpu") -> Tensor:
    """(B, L) bool: a clean prompt prefix of random length (1..max_prompt_frac * L) with probability
    prompt_prob, else no prompt (unconditional generation is learned too)."""
    max_len = max(1, int(max_prompt_frac * length))
    lengths = torch.randint(1, max_len + 1, (batch,), device=device)
    lengths = torch.where(torch.rand(batch, device=device) < prompt_prob, lengths, torch.zeros_like(lengths))
    return torch.arange(length, device=device)[None] < lengths[:, None]


def training_prompt(cfg: PromptConfig, batch: int, length: int, device: torch.device | str = "cpu"
                    ) -> tuple[Tensor, Tensor]:
    """(prompt_mask (B, L) bool, drop_prompt (B,) bool) for one training batch, from the global RNG."""
    mask = random_prefix_mask(batch, length, cfg.prompt_prob, cfg.max_prompt_frac, device)
    drop = torch.rand(batch, device=device) < cfg.cfg_dropout
    return mask, drop
