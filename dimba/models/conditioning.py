"""Conditioning signals of the DIMBA denoiser: the diffusion time and the prompt."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoidal_features(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Transformer-style sinusoidal features of continuous t in [0, 1] (scaled by 1000 as in DDPM).

    t: (B,) -> (B, dim), computed in fp32.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    feats = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return torch.nn.functional.pad(feats, (0, dim % 2))


class TimestepEmbedding(nn.Module):
    """Sinusoidal features of t through a two-layer MLP: (B,) -> (B, d_model)."""

    def __init__(self, d_model: int, n_features: int = 256):
        super().__init__()
        self.n_features = n_features
        self.mlp = nn.Sequential(nn.Linear(n_features, d_model), nn.SiLU(), nn.Linear(d_model, d_model))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(sinusoidal_features(t, self.n_features).to(self.mlp[0].weight.dtype))


class PromptEncoder(nn.Module):
    """The paper's lightweight prompt encoder: an MLP over the prompt's token embeddings, mean-pooled over
    prompt positions, giving C: (B, d_model). `frozen=True` keeps its random initialisation fixed.

    Examples without a prompt (or with the prompt dropped for classifier-free guidance) get a learned null
    vector instead.
    """

    def __init__(self, d_embed: int, d_model: int, frozen: bool = False):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(d_embed, d_model), nn.SiLU(), nn.Linear(d_model, d_model))
        self.null = nn.Parameter(torch.zeros(d_model))
        if frozen:
            self.mlp.requires_grad_(False)

    def forward(self, prompt_embeddings: Tensor, prompt_mask: Tensor) -> Tensor:
        """prompt_embeddings: (B, L, d_embed); prompt_mask: (B, L) bool, True on prompt positions."""
        h = self.mlp(prompt_embeddings)  # (B, L, D)
        weights = prompt_mask.to(h.dtype).unsqueeze(-1)
        count = weights.sum(1)  # (B, 1)
        pooled = (h * weights).sum(1) / count.clamp(min=1)
        return torch.where(count > 0, pooled, self.null.to(h.dtype).expand_as(pooled))
