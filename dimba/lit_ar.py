"""ARLM: the autoregressive baseline as a LightningModule (next-token loss, perplexity, recurrent sampling).

Trained by the same CLI and data module: `dimba fit --config configs/ar.yaml`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from dimba.lit_base import LanguageModelBase
from dimba.models.ar import ARLanguageModel, stack_states
from dimba.sampling import sample_tokens, sampling_generator


class ARLM(LanguageModelBase):
    """Causal Mamba-2 LM. Every sequence is scored after an end-of-sequence token, which also starts
    generation, so an empty prompt is a document start."""

    def __init__(self, vocab_size: int = 4096, seq_len: int = 128, d_model: int = 256, n_layers: int = 6,
                 d_state: int = 32, headdim: int = 64, expand: int = 2, chunk_size: int = 64,
                 mlp_ratio: float = 0.0, impl: str = "auto", lr: float = 1e-3, weight_decay: float = 0.1,
                 betas: tuple[float, float] = (0.9, 0.98), warmup_steps: int = 200,
                 lr_decay_steps: int | None = None, min_lr_ratio: float = 0.1):
        super().__init__()
        self.save_hyperparameters()
        self.net = ARLanguageModel(vocab_size, d_model=d_model, n_layers=n_layers, d_state=d_state,
                                   headdim=headdim, expand=expand, chunk_size=chunk_size, mlp_ratio=mlp_ratio,
                                   impl=impl)

    def next_token_loss(self, tokens: Tensor) -> Tensor:
        """Mean CE (nats) of predicting tokens[:, 1:] from tokens[:, :-1]."""
        logits = self.net(tokens[:, :-1])
        return F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        loss = self.next_token_loss(batch)
        self.log("train/loss", loss, batch_size=batch.shape[0])
        self.log("loss", loss, prog_bar=True, logger=False, batch_size=batch.shape[0])
        return loss

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        self.log_next_token_metrics(batch, "val")

    def test_step(self, batch: Tensor, batch_idx: int) -> None:
        self.log_next_token_metrics(batch, "test")

    def log_next_token_metrics(self, batch: Tensor, stage: str) -> None:
        loss = self.next_token_loss(batch)
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=batch.shape[0], sync_dist=True)
        self.log(f"{stage}/ppl", torch.exp(loss), batch_size=batch.shape[0], sync_dist=True)

    @property
    def flops_per_token(self) -> float:
        """6 x parameters (Kaplan et al. 2020)."""
        return 6.0 * self.num_parameters()

    def generation_call(self):
        return self.net.step

    @torch.no_grad()
    def score(self, tokens: Tensor, mask: Tensor) -> tuple[float, int]:
        """Summed negative log-likelihood (nats) of the tokens where mask is True, each predicted from all
        tokens before it; tokens (B, L) start with EOS. Returns (total NLL, number of scored tokens)."""
        logits = self.net(tokens[:, :-1]).float()
        nll = F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none")
        m = mask[:, 1:]
        return float((nll * m).sum()), int(m.sum())

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], gen_len: int, temperature: float = 1.0, top_p: float = 1.0,
                 seed: int | None = None) -> list[list[int]]:
        """gen_len new tokens per prompt, with recurrent state: one prefill per prompt (EOS + prompt), then
        one batched `step` per token; the prefix is never re-run."""
        if gen_len < 1:
            raise ValueError(f"the generation length must be >= 1, got {gen_len}")
        eos = self.tokenizer.eos_id if self.tokenizer is not None else 0
        generator = sampling_generator(seed, self.device)
        last_logits, states = [], []
        for prompt in prompts:
            ids = torch.tensor([[eos, *prompt]], dtype=torch.long, device=self.device)
            logits, state = self.net.prefill(ids)
            last_logits.append(logits)
            states.append(state)
        logits, state = torch.cat(last_logits), stack_states(states)
        step, out = self.generation_fn(), []
        for _ in range(gen_len):
            token = sample_tokens(logits, temperature, top_p, generator)
            out.append(token)
            logits, state = step(token, state)
        return torch.stack(out, dim=1).tolist()


def perplexity(nll: float, count: int) -> float:
    return math.exp(nll / max(count, 1))
