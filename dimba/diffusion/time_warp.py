"""Learned time warping (CDCD, Dieleman et al. 2022, Section 3.3), the "learned noise schedule".

The cross-entropy of the denoiser's token prediction rises from ~0 at t = 0 to the unigram entropy at
t = 1, and most of that rise happens in a narrow band of t. CDCD fits the monotone curve CE(t) from the
training loss and samples t so that CE is uniformly distributed: t = F^{-1}(u), F(t) = CE(t) / CE(1) (up
to the value at t = 0). Training then spends its steps where tokens are decided, and the sampler spaces its
steps the same way.

Here CE(t) is estimated from the most recent `window` (t, CE) pairs, as bin means fitted by weighted
isotonic (monotone) regression, so that neither stale values from the untrained model nor noise in rarely
sampled bins can pull samples towards the easy end. A fraction `uniform_mix` of uniform density keeps every
noise level sampled (and observed), so no level is ever starved of loss weight.
"""

from __future__ import annotations

import torch
from torch import Tensor


def isotonic_increasing(values: Tensor, weights: Tensor) -> Tensor:
    """Weighted least-squares non-decreasing fit (pool adjacent violators). values, weights: (n,)."""
    blocks: list[list[float]] = []  # [mean, weight, size]
    for v, w in zip(values.tolist(), weights.tolist(), strict=True):
        blocks.append([v, w, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            v2, w2, n2 = blocks.pop()
            v1, w1, n1 = blocks.pop()
            total = w1 + w2
            mean = (v1 * w1 + v2 * w2) / total if total > 0 else (v1 + v2) / 2
            blocks.append([mean, total, n1 + n2])
    return torch.tensor([b[0] for b in blocks for _ in range(int(b[2]))], dtype=torch.float64)


class TimeWarp:
    """Estimate of CE(t) from recent training losses and the inverse-CDF map u -> t built from it. Not a
    network parameter: its state travels in the checkpoint through `state_dict` / `load_state_dict`."""

    def __init__(self, num_bins: int = 64, window: int = 8192, uniform_mix: float = 0.1):
        self.num_bins, self.window, self.uniform_mix = num_bins, window, uniform_mix
        self.t = torch.zeros(window, dtype=torch.float64)
        self.loss = torch.zeros(window, dtype=torch.float64)
        self.count = 0  # pairs seen in total; the buffer holds the last `window` of them
        self._cdf: Tensor | None = None

    @property
    def edges(self) -> Tensor:
        return torch.linspace(0, 1, self.num_bins + 1, dtype=torch.float64)

    def update(self, t: Tensor, loss: Tensor) -> None:
        """Record per-example losses (B,) at times t (B,). Non-finite pairs are dropped: the warp is updated
        before a guard can skip a step with a NaN loss, and one NaN in the window would make every bin mean
        NaN and map every u to a single t."""
        t = t.detach().double().cpu().flatten()
        loss = loss.detach().double().cpu().flatten()
        finite = torch.isfinite(t) & torch.isfinite(loss)
        t, loss = t[finite][-self.window:], loss[finite][-self.window:]
        if len(t) == 0:
            return
        idx = (self.count + torch.arange(len(t))) % self.window
        self.t[idx], self.loss[idx] = t, loss
        self.count += len(t)
        self._cdf = None

    @property
    def ready(self) -> bool:
        """Enough recent data for a fit: half a window (before that, t is uniform)."""
        return self.count >= self.window // 2

    def curve(self) -> Tensor:
        """Monotone estimate of CE at the bin centres, (num_bins,)."""
        n = min(self.count, self.window)
        t, loss = self.t[:n], self.loss[:n]
        bins = (t * self.num_bins).long().clamp(0, self.num_bins - 1)
        counts = torch.zeros(self.num_bins, dtype=torch.float64).index_add_(0, bins, torch.ones_like(loss))
        sums = torch.zeros(self.num_bins, dtype=torch.float64).index_add_(0, bins, loss)
        means = sums / counts.clamp(min=1)
        # Empty bins (possible only early) take the next observed value to their left; weight 0 in the fit.
        for i in range(1, self.num_bins):
            if counts[i] == 0:
                means[i] = means[i - 1]
        return isotonic_increasing(means, counts)

    def cdf(self) -> Tensor:
        """F at the bin edges (num_bins + 1,), non-decreasing from 0 to 1; uniform until `ready`."""
        uniform = self.edges
        if not self.ready:
            return uniform
        if self._cdf is None:
            fitted = self.curve()
            rise = torch.cat([torch.zeros(1, dtype=torch.float64), torch.diff(fitted)]).clamp(min=0)
            if rise.sum() <= 0:
                self._cdf = uniform
            else:
                learned = torch.cat([torch.zeros(1, dtype=torch.float64), rise.cumsum(0) / rise.sum()])
                self._cdf = (1 - self.uniform_mix) * learned + self.uniform_mix * uniform
        return self._cdf

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
        return {"t": self.t.clone(), "loss": self.loss.clone(), "count": self.count, "num_bins": self.num_bins,
                "window": self.window, "uniform_mix": self.uniform_mix}

    def load_state_dict(self, state: dict) -> None:
        self.num_bins, self.window, self.uniform_mix = state["num_bins"], state["window"], state["uniform_mix"]
        self.t, self.loss, self.count = state["t"].clone(), state["loss"].clone(), int(state["count"])
        self._cdf = None
