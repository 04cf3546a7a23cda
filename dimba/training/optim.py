"""AdamW with linear warm-up and cosine decay; no weight decay on norms, biases, embeddings, A_log, D,
dt_bias (anything 1-D, anything flagged `_no_weight_decay`, and the embedding tables)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from dimba.config import Config, check


@dataclass
class OptimConfig(Config):
    """Optimiser and learning-rate schedule, the same for every model kind."""

    lr: float = 1e-3  # peak learning rate
    weight_decay: float = 0.1  # AdamW decay of the matrices (not of norms, biases, embeddings, SSM scalars)
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = 200  # linear warm-up from 0
    lr_decay_steps: int | None = None  # cosine decay length; None: the trainer's max_steps
    min_lr_ratio: float = 0.1  # the cosine ends at lr * min_lr_ratio

    def __post_init__(self):
        self.betas = tuple(self.betas)
        check(self.lr > 0 and self.weight_decay >= 0, f"optim.lr must be > 0 and weight_decay >= 0, "
                                                       f"got {self.lr}, {self.weight_decay}")
        check(self.warmup_steps >= 0, f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        check(0 <= self.min_lr_ratio <= 1, f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    embedding_params = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.dim() < 2 or getattr(p, "_no_weight_decay", False) or id(p) in embedding_params
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                  min_ratio: float = 0.1) -> torch.optim.lr_scheduler.LambdaLR:
    """LR multiplier: linear 0 -> 1 over warmup_steps, then cosine 1 -> min_ratio at total_steps."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_optimizer(net: nn.Module, cfg: OptimConfig, max_steps: int | None) -> dict:
    """Lightning's configure_optimizers answer: AdamW and the per-step warm-up + cosine schedule."""
    opt = torch.optim.AdamW(param_groups(net, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)
    total = cfg.lr_decay_steps or (max_steps if max_steps and max_steps > 0 else 10_000)
    sched = warmup_cosine(opt, cfg.warmup_steps, total, cfg.min_lr_ratio)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
