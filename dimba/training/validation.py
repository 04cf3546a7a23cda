"""Validation of the diffusion models at fixed noise levels: draws that are a function of each example alone
(the same whatever batch, rank or validation it falls in), and torchmetrics aggregates that DDP reduces."""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from dimba.sampling import sampling_generator

VAL_TIMES = (0.1, 0.3, 0.5, 0.7, 0.9)


def per_example_draws(tokens: Tensor, *shape: int, uniform: bool = False) -> Tensor:
    """(B, *shape) draws (standard normal, or uniform in [0, 1)), each example's from a hash of its own tokens:
    fixed across validations, batch sizes and DDP ranks, so a DDP validation equals a single-process one."""
    rows = []
    for row in tokens.cpu():
        seed = int.from_bytes(hashlib.blake2b(row.numpy().tobytes(), digest_size=7).digest(), "little")
        generator = sampling_generator(seed, stream="validation")
        rows.append(torch.rand(shape, generator=generator) if uniform else torch.randn(shape, generator=generator))
    return torch.stack(rows).to(tokens.device)


class FixedTimeMetrics(nn.Module):
    """Token cross-entropy, accuracy and loss at each of VAL_TIMES, per stage (val, test), averaged over all
    tokens of all batches and ranks. Logged as `{stage}_t/ce@t`, `{stage}_t/acc@t` and `{stage}/loss` (the mean
    over t of the loss)."""

    def __init__(self):
        super().__init__()
        self.metrics = nn.ModuleDict({f"{stage}_{kind}_{i}": MeanMetric() for stage in ("val", "test")
                                      for kind in ("ce", "acc", "loss") for i in range(len(VAL_TIMES))})

    def update(self, module, stage: str, i: int, ce: Tensor, acc: Tensor, loss: Tensor, count: float,
               batch_size: int) -> None:
        """Fold in one batch's values at VAL_TIMES[i] (weights: the number of tokens they average over)."""
        tv = VAL_TIMES[i]
        for kind, value in (("ce", ce), ("acc", acc), ("loss", loss)):
            self.metrics[f"{stage}_{kind}_{i}"].update(value, count)
        module.log(f"{stage}_t/ce@{tv}", self.metrics[f"{stage}_ce_{i}"], batch_size=batch_size)
        module.log(f"{stage}_t/acc@{tv}", self.metrics[f"{stage}_acc_{i}"], batch_size=batch_size)

    def log_stage_loss(self, module, stage: str) -> None:
        """At the end of the stage: the mean over t of each t's token-weighted loss, from the reduced aggregates."""
        losses = [self.metrics[f"{stage}_loss_{i}"] for i in range(len(VAL_TIMES))]
        value = torch.stack([m.compute() for m in losses]).mean()
        for m in losses:
            m.reset()
        module.log(f"{stage}/loss", value, prog_bar=True)


class FixedTimeValidation:
    """Mixin (before LanguageModelBase) for the diffusion LightningModules: validation and test evaluate
    `loss_at_fixed_time` at each of VAL_TIMES, unconditional for text (a task's question given), with draws fixed
    per example (`fixed_time_draws`), into `self.eval_metrics` (a FixedTimeMetrics)."""

    eval_metrics: FixedTimeMetrics

    def fixed_time_draws(self, tokens: Tensor) -> dict:
        """The random inputs of the corruption, fixed per example: keyword arguments of loss_at_fixed_time."""
        raise NotImplementedError

    def loss_at_fixed_time(self, tokens: Tensor, prompt: Tensor, t: Tensor, **draws):
        """A LossOutput with metrics "ce" and "acc" for tokens (B, L) corrupted at t (B,), prompt positions given."""
        raise NotImplementedError

    def validation_step(self, batch, batch_idx: int) -> None:
        self.evaluate_at_fixed_times(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self.evaluate_at_fixed_times(batch, "test")

    def evaluate_at_fixed_times(self, batch, stage: str) -> None:
        from dimba.training.base import unpack

        tokens, given = unpack(batch)
        B = tokens.shape[0]
        prompt = torch.zeros_like(tokens, dtype=torch.bool) if given is None else given
        draws = self.fixed_time_draws(tokens)
        for i, tv in enumerate(VAL_TIMES):
            out = self.loss_at_fixed_time(tokens, prompt, torch.full((B,), tv, device=tokens.device), **draws)
            self.eval_metrics.update(self, stage, i, out.metrics["ce"], out.metrics["acc"], out.total,
                                     float(tokens.numel()), B)

    def on_validation_epoch_end(self) -> None:
        self.eval_metrics.log_stage_loss(self, "val")

    def on_test_epoch_end(self) -> None:
        self.eval_metrics.log_stage_loss(self, "test")
