"""Configuration of DIMBA's diffusion process, of its learned time warp, and of which tokens a training example
gives as its prompt."""

from __future__ import annotations

import math
from dataclasses import dataclass

from dimba.config import Config, check, one_of
from dimba.diffusion.schedules import SCHEDULES


@dataclass
class DiffusionConfig(Config):
    """Diffusion over token embeddings, for both DIMBA kinds (`DimbaLM`: Gaussian; `HybridLM`: hybrid)."""

    schedule: str = "cosine"  # "cosine" (the paper, s = 0.008), "sqrt" (Diffusion-LM), "linear" or "rank" (CANDI)
    log_snr_shift: float = 0.0  # added to log-SNR at every t: -2 ln k = k times more noise
    mse_weight: float = 1.0  # weight of ||x0_hat - x0||^2
    ce_weight: float = 1.0  # weight of the rounding cross-entropy on the output head
    self_cond_prob: float = 0.5  # share of batches trained with self-conditioning (if the network has it)
    skip_logits: bool = False  # add the exact likelihood of x_t under each token to the logits (Plaid)

    def __post_init__(self):
        one_of("diffusion.schedule", self.schedule, SCHEDULES)
        check(self.mse_weight >= 0 and self.ce_weight >= 0 and self.mse_weight + self.ce_weight > 0,
              f"diffusion.mse_weight and ce_weight must be >= 0, not both 0; got {self.mse_weight}, {self.ce_weight}")
        check(0 <= self.self_cond_prob <= 1, f"diffusion.self_cond_prob must be in [0, 1], got {self.self_cond_prob}")
        check(math.isfinite(self.log_snr_shift), f"diffusion.log_snr_shift must be finite, got {self.log_snr_shift}")


@dataclass
class TimeWarpConfig(Config):
    """The learned time warp of the Gaussian DIMBA (CDCD; `dimba.diffusion.time_warp`)."""

    enabled: bool = True  # learn where to train and sample t from the loss curve
    window: int = 8192  # the warp fits the most recent (t, CE) pairs, this many; used after half of them

    def __post_init__(self):
        check(2 <= self.window <= 1 << 24, f"time_warp.window must be in 2..16777216, got {self.window}")


@dataclass
class HybridConfig(Config):
    """What the hybrid corruption adds (`HybridLM`): where its tokens lose their latents, where its training signal
    goes. The defaults are the behaviour of checkpoints written before these options existed (which resume with the
    loss they were trained on); configs/model/hybrid.yaml sets today's default, weighting "plain"."""

    absorb_above: float = 1.0  # t_s: above it a corrupted token is absorbed (no latent, masked diffusion's regime)
    weighting: str = "elbo"  # the corrupted tokens' CE weighted by the ELBO's 1/t ("elbo"), or plain ("plain")

    def __post_init__(self):
        check(0 < self.absorb_above <= 1, f"hybrid.absorb_above must be in (0, 1], got {self.absorb_above}")
        one_of("hybrid.weighting", self.weighting, ("elbo", "plain"))


PROMPT_KINDS = ("prefix", "suffix", "spans", "scattered")


@dataclass
class PromptConfig(Config):
    """Which tokens of a training sequence are given clean, as the prompt the model conditions on: a prefix
    (prompting), or, for infilling, a suffix, a few random spans or scattered single tokens."""

    prompt_prob: float = 0.5  # share of examples with clean tokens (the rest: none, unconditional generation)
    max_prompt_frac: float = 0.5  # clean tokens are 1 .. max_prompt_frac * seq_len of the sequence
    cfg_dropout: float = 0.1  # share of examples whose prompt is hidden (for classifier-free guidance)
    prefix: float = 1.0  # relative weight of a clean prefix among examples with clean tokens
    suffix: float = 0.0  # ... of a clean suffix
    spans: float = 0.0  # ... of 1 to 3 clean spans at random places
    scattered: float = 0.0  # ... of clean single tokens at random places

    def __post_init__(self):
        for name in ("prompt_prob", "max_prompt_frac", "cfg_dropout"):
            value = getattr(self, name)
            check(0 <= value <= 1, f"prompt.{name} must be in [0, 1], got {value}")
        weights = [getattr(self, kind) for kind in PROMPT_KINDS]
        check(min(weights) >= 0 and sum(weights) > 0,
              f"prompt.{'/'.join(PROMPT_KINDS)} are relative weights: >= 0, not all 0; got {weights}")

    @property
    def prefix_only(self) -> bool:
        return all(getattr(self, kind) == 0 for kind in PROMPT_KINDS[1:])
