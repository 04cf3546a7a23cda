"""Learned time warping (CDCD, Dieleman et al. 2022, Section 3.3), the "learned noise schedule".

The cross-entropy of the denoiser's token prediction rises from ~0 at t = 0 to the unigram entropy at
t = 1, and most of that rise happens in a narrow band of t. CDCD fits the monotone curve CE(t) from the
training loss and samples t so that CE is uniformly distributed: t = F^{-1}(u), F = CE / CE(1). Training
then spends its steps where tokens are decided, and the sampler spaces its steps the same way.

Here F is a piecewise-linear, monotone fit to running means of the CE in `num_bins` bins of t. A fraction
`uniform_mix` of uniform density is mixed in so that no noise level is ever starved of loss weight.
"""

from __future__ import annotations

import torch
from torch import Tensor


class TimeWarp:
    """Running estimate of CE(t) and the inverse-CDF map u -> t built from it. Not a network parameter:
    its state travels in the checkpoint through `state_dict` / `load_state_dict`."""

    def __init__(self, num_bins: int = 64, momentum: float = 0.99, uniform_mix: float = 0.1):
        self.num_bins, self.momentum, self.uniform_mix = num_bins, momentum, uniform_mix
        self.loss = torch.zeros(num_bins, dtype=torch.float64)
        self.seen = torch.zeros(num_bins, dtype=torch.float64)

    @property
    def edges(self) -> Tensor:
        return torch.linspace(0, 1, self.num_bins + 1, dtype=torch.float64)

    def update(self, t: Tensor, loss: Tensor) -> None:
        """Fold per-example losses (B,) at times t (B,) into the running per-bin means."""
        t = t.detach().double().cpu()
        loss = loss.detach().double().cpu()
        bins = (t * self.num_bins).long().clamp(0, self.num_bins - 1)
        sums = torch.zeros(self.num_bins, dtype=torch.float64).index_add_(0, bins, loss)
        counts = torch.zeros(self.num_bins, dtype=torch.float64).index_add_(0, bins, torch.ones_like(loss))
        hit = counts > 0
        means = sums[hit] / counts[hit]
        fresh = hit & (self.seen == 0)
        self.loss[fresh] = means[fresh[hit]]
        old = hit & (self.seen > 0)
        self.loss[old] = self.momentum * self.loss[old] + (1 - self.momentum) * means[old[hit]]
        self.seen += counts

    @property
    def ready(self) -> bool:
        return bool((self.seen > 0).all())

    def cdf(self) -> Tensor:
        """F at the bin edges (num_bins + 1,), monotone from 0 to 1; uniform until every bin has been seen."""
        uniform = self.edges
        if not self.ready:
            return uniform
        curve = torch.cummax(self.loss, dim=0).values  # CE(t) is monotone in t; remove the noise
        rise = torch.diff(torch.cat([torch.zeros(1, dtype=torch.float64), curve])).clamp(min=0)
        if rise.sum() <= 0:
            return uniform
        learned = torch.cat([torch.zeros(1, dtype=torch.float64), rise.cumsum(0) / rise.sum()])
        return (1 - self.uniform_mix) * learned + self.uniform_mix * uniform

    def warp(self, u: Tensor) -> Tensor:
        """u in [0, 1] (any shape) -> t = F^{-1}(u), piecewise linear; same dtype and device as u."""
        cdf = self.cdf()
        flat = u.detach().double().cpu().flatten().clamp(0, 1)
        idx = torch.searchsorted(cdf, flat, right=True).clamp(1, self.num_bins)
        lo, hi = cdf[idx - 1], cdf[idx]
        frac = torch.where(hi > lo, (flat - lo) / (hi - lo), torch.zeros_like(flat))
        t = (idx - 1 + frac) / self.num_bins
        return t.view(u.shape).to(dtype=u.dtype, device=u.device)

    def state_dict(self) -> dict:
        return {"loss": self.loss.clone(), "seen": self.seen.clone(), "num_bins": self.num_bins,
                "momentum": self.momentum, "uniform_mix": self.uniform_mix}

    def load_state_dict(self, state: dict) -> None:
        self.num_bins, self.momentum = state["num_bins"], state["momentum"]
        self.uniform_mix = state["uniform_mix"]
        self.loss, self.seen = state["loss"].clone(), state["seen"].clone()
