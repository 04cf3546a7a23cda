"""Training callbacks: EMA of the weights, and generated samples logged to TensorBoard."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.utilities import rank_zero_only

from dimba.diffusion.generate import SamplingConfig


class EMA(WeightAveraging):
    """Exponential moving average of the weights with warm-up: decay_k = min(decay, (1 + k) / (10 + k)) at
    update k, so early averages are not dominated by the random initialisation.

    Built on Lightning's WeightAveraging: updated after each optimizer step, swapped in for validation,
    and saved as the checkpoint's `state_dict` (the training weights go to `current_model_state`), so every
    checkpoint samples with the EMA weights. The averaged copy lives on the model's device.
    """

    def __init__(self, decay: float = 0.999, warmup: bool = True):
        self.decay, self.warmup = decay, warmup

        @torch.no_grad()
        def ema_update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor):
            k = float(num_averaged)
            d = min(decay, (1 + k) / (10 + k)) if warmup else decay
            torch._foreach_lerp_(averaged, current, 1 - d)

        super().__init__(multi_avg_fn=ema_update, use_buffers=True)


class SampleLogger(L.Callback):
    """Every `every_n_steps` optimizer steps, generate completions of a few prompts and log them as text."""

    def __init__(self, every_n_steps: int = 500, prompts: tuple[str, ...] = ("ROMEO:", "", "First Citizen:\n"),
                 length: int = 64, steps: int = 32):
        self.every_n_steps, self.prompts, self.length, self.steps = every_n_steps, list(prompts), length, steps

    @rank_zero_only
    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if step == 0 or step % self.every_n_steps or trainer.logger is None or pl_module.tokenizer is None:
            return
        tok = pl_module.tokenizer
        was_training = pl_module.training
        pl_module.eval()
        completions, _ = pl_module.generate([tok.encode(p) for p in self.prompts], self.length,
                                            SamplingConfig(steps=self.steps, seed=step))
        pl_module.train(was_training)
        text = "\n\n".join(f"**{p!r}** → {tok.decode(c, stop_at_eos=True)!r}"
                           for p, c in zip(self.prompts, completions, strict=True))
        experiment = trainer.logger.experiment
        if hasattr(experiment, "add_text"):
            experiment.add_text("samples", text, global_step=step)
