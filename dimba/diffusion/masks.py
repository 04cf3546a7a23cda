"""Which positions of a training example are given (clean prompt) and which the model must generate."""

from __future__ import annotations

import torch
from torch import Tensor

from dimba.diffusion.config import PROMPT_KINDS, PromptConfig


def random_prefix_mask(batch: int, length: int, prompt_prob: float, max_prompt_frac: float,
                       device: torch.device | str = "cpu") -> Tensor:
    """(B, L) bool: a clean prompt prefix of random length (1..max_prompt_frac * L) with probability
    prompt_prob, else no prompt (unconditional generation is learned too)."""
    max_len = max(1, int(max_prompt_frac * length))
    lengths = torch.randint(1, max_len + 1, (batch,), device=device)
    lengths = torch.where(torch.rand(batch, device=device) < prompt_prob, lengths, torch.zeros_like(lengths))
    return torch.arange(length, device=device)[None] < lengths[:, None]


def any_position_mask(cfg: PromptConfig, batch: int, length: int, device: torch.device | str = "cpu") -> Tensor:
    """(B, L) bool: clean tokens of the kinds PromptConfig weighs (prefix, suffix, spans, scattered) for a
    prompt_prob share of the examples, about n = 1 .. max_prompt_frac * L of them each; none for the rest."""
    if cfg.prefix_only:  # the plain prompting case, drawn as it always was
        return random_prefix_mask(batch, length, cfg.prompt_prob, cfg.max_prompt_frac, device)
    max_len = max(1, int(cfg.max_prompt_frac * length))
    n = torch.randint(1, max_len + 1, (batch, 1), device=device)
    pos = torch.arange(length, device=device)[None]
    # Spans: 1 to 3 of them, n / k long each, at random starts (they may overlap).
    k = torch.randint(1, 4, (batch, 1), device=device)
    span = (n // k).clamp(min=1)  # (B, 1)
    starts = (torch.rand(batch, 3, device=device) * (length - span + 1)).long()[..., None]  # (B, 3, 1)
    in_span = (pos[:, None] >= starts) & (pos[:, None] < starts + span[..., None])  # (B, 3, L)
    in_span &= torch.arange(3, device=device)[None, :, None] < k[..., None]
    masks = torch.stack([pos < n, pos >= length - n, in_span.any(1),
                         torch.rand(batch, length, device=device) < n / length], dim=1)  # (B, kinds, L)
    weights = torch.tensor([getattr(cfg, kind) for kind in PROMPT_KINDS], device=device, dtype=torch.float)
    kind = torch.multinomial(weights.expand(batch, -1), 1)  # (B, 1)
    chosen = masks.gather(1, kind[..., None].expand(-1, 1, length))[:, 0]
    return chosen & (torch.rand(batch, 1, device=device) < cfg.prompt_prob)


def training_prompt(cfg: PromptConfig, batch: int, length: int, device: torch.device | str = "cpu"
                    ) -> tuple[Tensor, Tensor]:
    """(prompt_mask (B, L) bool, drop_prompt (B,) bool) for one training batch, from the global RNG."""
    mask = any_position_mask(cfg, batch, length, device)
    drop = torch.rand(batch, device=device) < cfg.cfg_dropout
    return mask, drop
