"""ARLM: the autoregressive baseline as a LightningModule (next-token loss, perplexity, recurrent sampling).

Trained by the same CLI and data module: `dimba fit --config configs/base.yaml --model configs/model/ar.yaml`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MeanMetric
from torchmetrics.text import Perplexity

from dimba.models.ar import ARLanguageModel
from dimba.models.config import MambaConfig
from dimba.sampling import ExampleStreams, SamplingConfig, sample_tokens
from dimba.training.base import LanguageModelBase, LossOutput, OnStep
from dimba.training.optim import OptimConfig


class ARLM(LanguageModelBase):
    """Causal Mamba-2 LM. Every sequence is scored after an end-of-sequence token, which also starts
    generation, so an empty prompt is a document start.

    Args:
        net: the Mamba-2 backbone (`MambaConfig`), causal here.
        optim: optimiser and LR schedule (`OptimConfig`).
        vocab_size, seq_len: from the data module (linked by the CLI).
    """

    kind, short_name, display_name = "ar", "AR", "the autoregressive baseline"
    sampling_options = frozenset({"temperature", "top_p"})
    can_score = True

    def __init__(self, net: MambaConfig = MambaConfig(n_layers=6, d_state=32), optim: OptimConfig = OptimConfig(),
                 vocab_size: int = 4096, seq_len: int = 128):
        super().__init__(vocab_size, seq_len, optim)
        self.net_config = MambaConfig.from_dict(net)
        self.save_configs(net=self.net_config)
        self.net = ARLanguageModel(self.net_config, vocab_size)
        # Validation / test aggregates as torchmetrics, so that DDP ranks are reduced together.
        self.eval_loss = torch.nn.ModuleDict({stage: MeanMetric() for stage in ("val", "test")})
        self.eval_ppl = torch.nn.ModuleDict({stage: Perplexity() for stage in ("val", "test")})

    def loss(self, batch: Tensor) -> LossOutput:
        """Mean cross-entropy (nats per token) of predicting batch[:, 1:] from batch[:, :-1]."""
        logits = self.net(batch[:, :-1])
        return LossOutput(F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten()))

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        self.log_next_token_metrics(batch, "val")

    def test_step(self, batch: Tensor, batch_idx: int) -> None:
        self.log_next_token_metrics(batch, "test")

    def log_next_token_metrics(self, batch: Tensor, stage: str) -> None:
        logits = self.net(batch[:, :-1]).float()
        targets = batch[:, 1:]
        nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        self.eval_loss[stage].update(nll, targets.numel())
        self.eval_ppl[stage].update(logits, targets)
        self.log(f"{stage}/loss", self.eval_loss[stage], prog_bar=True, batch_size=batch.shape[0])
        self.log(f"{stage}/ppl", self.eval_ppl[stage], batch_size=batch.shape[0])

    @property
    def flops_per_token(self) -> float:
        """6 x parameters (Kaplan et al. 2020)."""
        return 6.0 * self.num_parameters()

    def generation_call(self):
        return self.net.step

    def forward_at_length(self, length: int):
        tokens = torch.zeros(1, length, dtype=torch.long, device=self.device)
        return lambda: self.net(tokens)

    def describe(self, cfg: SamplingConfig) -> str:
        """E.g. "AR, temperature 1, top-p 0.9" (the labels of docs/results.md)."""
        return f"AR, temperature {cfg.temperature:g}" + (f", top-p {cfg.top_p}" if cfg.top_p < 1 else "")

    @torch.no_grad()
    def score(self, tokens: Tensor, mask: Tensor) -> tuple[float, int]:
        """Summed negative log-likelihood (nats) of the tokens where mask is True, each predicted from all
        tokens before it; tokens (B, L) start with EOS. Returns (total NLL, number of scored tokens)."""
        logits = self.net(tokens[:, :-1]).float()
        nll = F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none")
        m = mask[:, 1:]
        return float((nll * m).sum()), int(m.sum())

    def fill_group(self, tokens: Tensor, given: Tensor, cfg: SamplingConfig, streams: ExampleStreams,
                   on_step: OnStep | None) -> Tensor:
        """Left to right, one recurrent `step` per position after EOS: a given position is fed as it is (teacher
        forcing), the others are drawn from the model given everything to their left; a plain autoregressive
        model never sees what is to its right. The positions given in every row from the start are one prefill."""
        B, L = tokens.shape
        eos = self.tokenizer.eos_id if self.tokenizer is not None else 0
        not_given = (~given).int()
        prefix = int(not_given.argmax(1).min()) if bool(not_given.any()) else L  # given in every row up to here
        ids = torch.cat([tokens.new_full((B, 1), eos), tokens[:, :prefix]], dim=1)
        logits, state = self.net.prefill(ids)
        step = self.generation_fn()
        out = torch.where(given, tokens, torch.full_like(tokens, -1))
        for pos in range(prefix, L):
            drawn = sample_tokens(logits, cfg.temperature, cfg.top_p, streams)
            token = torch.where(given[:, pos], tokens[:, pos], drawn)
            out[:, pos] = token
            if on_step is not None:
                on_step(pos - prefix, out)
            if pos + 1 < L:
                logits, state = step(token, state)
        return out


def perplexity(nll: float, count: int) -> float:
    return math.exp(nll / max(count, 1))
