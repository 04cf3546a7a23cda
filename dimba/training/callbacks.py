"""Training callbacks: EMA of the weights, generated samples in TensorBoard, a guard against non-finite
gradients, and a checkpoint on SIGTERM."""

from __future__ import annotations

import signal
import threading
from datetime import timedelta
from functools import partial
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Timer, WeightAveraging
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from dimba.errors import DimbaError
from dimba.sampling import SamplingConfig


class EMA(WeightAveraging):
    """Exponential moving average of the weights with warm-up: decay_k = min(decay, (1 + k) / (10 + k)) at
    update k, so early averages are not dominated by the random initialisation.

    Built on Lightning's WeightAveraging: updated after each optimizer step, swapped in for validation,
    and saved as the checkpoint's `state_dict` (the training weights go to `current_model_state`), so every
    checkpoint samples with the EMA weights. The averaged copy lives on the model's device.
    """

    def __init__(self, decay: float = 0.999, warmup: bool = True):
        self.decay, self.warmup = decay, warmup
        super().__init__(multi_avg_fn=partial(ema_update, decay=decay, warmup=warmup), use_buffers=True)


@torch.no_grad()
def ema_update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor,
               decay: float, warmup: bool = True) -> None:
    """averaged <- d averaged + (1 - d) current, in place, with d = min(decay, (1 + k) / (10 + k)) at update k."""
    k = float(num_averaged)
    d = min(decay, (1 + k) / (10 + k)) if warmup else decay
    torch._foreach_lerp_(averaged, current, 1 - d)


class SampleLogger(L.Callback):
    """Every `every_n_steps` optimizer steps, generate completions of a few prompts and log them as text: `length`
    new tokens, or fewer where the model's context ends sooner (a sample must never stop a run), at `steps` denoising
    steps (default: the model's own)."""

    def __init__(self, every_n_steps: int = 500, prompts: tuple[str, ...] = ("ROMEO:", "", "First Citizen:\n"),
                 length: int = 64, steps: int | None = None):
        self.every_n_steps, self.prompts, self.length, self.steps = every_n_steps, list(prompts), length, steps

    @rank_zero_only
    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if step == 0 or step % self.every_n_steps or trainer.logger is None or pl_module.tokenizer is None:
            return
        tok = pl_module.tokenizer
        prompts = [tok.encode(p) for p in self.prompts]
        length = min(self.length, pl_module.max_length - max(map(len, prompts)))
        if length < 1:
            return
        was_training = pl_module.training
        pl_module.eval()
        steps = {"steps": self.steps} if "steps" in pl_module.sampling_options else {}
        completions = pl_module.generate(prompts, length, SamplingConfig(seed=step, **steps))
        pl_module.train(was_training)
        text = "\n\n".join(f"**{p!r}** → {tok.decode(c, stop_at_eos=True)!r}"
                           for p, c in zip(self.prompts, completions, strict=True))
        experiment = trainer.logger.experiment
        if hasattr(experiment, "add_text"):
            experiment.add_text("samples", text, global_step=step)


class NonFiniteGuard(L.Callback):
    """Skip optimizer steps whose gradients are not finite, count them, and stop after `max_in_a_row`
    consecutive ones with a clear message (the last good checkpoint is kept: none is written after).

    A skipped step drops every gradient (`grad = None`), which PyTorch optimizers treat as "no update" for
    that parameter: weights and optimizer moments stay as they were. The LR schedule still advances.
    """

    def __init__(self, max_in_a_row: int = 20):
        self.max_in_a_row = max_in_a_row
        self.in_a_row = 0
        self.skipped = 0

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module, optimizer) -> None:
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        finite = torch.stack([torch.isfinite(g).all() for g in grads]).all() if grads else torch.tensor(True)
        if trainer.world_size > 1:  # every rank must take the same decision, or DDP ranks diverge
            finite = trainer.strategy.reduce_boolean_decision(bool(finite), all=True)
        if bool(finite):
            self.in_a_row = 0
            return
        for p in pl_module.parameters():
            p.grad = None
        self.in_a_row += 1
        self.skipped += 1
        pl_module.log("train/nonfinite_skipped", float(self.skipped), rank_zero_only=True)
        if self.in_a_row >= self.max_in_a_row:
            raise DimbaError(f"{self.in_a_row} optimizer steps in a row had non-finite gradients (step "
                             f"{trainer.global_step}); stopping. The last checkpoint written is the last good "
                             "one; lower the learning rate or check the data")

    def state_dict(self) -> dict:
        return {"in_a_row": self.in_a_row, "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.in_a_row, self.skipped = state["in_a_row"], state["skipped"]


class CheckpointOnStop(L.Callback):
    """Save `last.ckpt` whenever training stops: at its end (max_time, max_steps), on SIGTERM and on SIGUSR1
    (what clusters send before preemption), so that no step is lost between periodic checkpoints.

    Lightning's ModelCheckpoint writes `last` at the end of training only if it wrote none during the run
    (after a periodic save, the steps since it were lost), and when it does, it writes after EMA has swapped
    the average into the training weights (the raw weights were lost). This writes `last` at the end of every
    run, before EMA: list it before EMA. (SLURM's SIGUSR1 requeue is Lightning's own.) It also refuses, with a
    clear error, to resume a run whose max_time is already spent, which Lightning would end at once without a
    step.
    """

    def __init__(self):
        self._sigusr1 = False

    def on_fit_start(self, trainer: L.Trainer, pl_module) -> None:
        # Lightning's Timer carries the elapsed time across a resume (restored before on_fit_start), so resuming
        # a run that max_time stopped, with the same or a smaller max_time, would end at once without a step.
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        remaining = timer.time_remaining() if timer is not None else None
        if remaining is not None and remaining <= 0:
            elapsed = timer.time_elapsed()
            hms = lambda seconds: str(timedelta(seconds=round(seconds)))
            raise DimbaError(f"this run has already trained for {hms(elapsed)}, its whole max_time "
                             f"({hms(elapsed - remaining)}, counted across resumes): raise --trainer.max_time "
                             "to continue it")
        # SIGUSR1 ends a process by default; under SLURM Lightning installs its own requeue handler, which is
        # left alone. Elsewhere, stop after the current step with a checkpoint, as for SIGTERM.
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None)):
            signal.signal(signal.SIGUSR1, self._on_sigusr1)

    def _on_sigusr1(self, signum, frame) -> None:
        self._sigusr1 = True

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self._sigusr1:
            self._sigusr1 = False
            rank_zero_info(f"SIGUSR1: stopping after step {trainer.global_step}")
            trainer.should_stop = True  # on_train_end below writes last.ckpt

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        callback = trainer.checkpoint_callback
        if callback is None or callback.dirpath is None or not callback.save_last:
            return
        # ModelCheckpoint's own end-of-training save of `last` runs after every other callback (Lightning puts it
        # last), so after EMA has copied the average into the training weights: that checkpoint's raw weights
        # would be the average, and a resumed run would continue from it. Saving here, before EMA, with
        # ModelCheckpoint's own naming, also stops it saving again at the end.
        callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))
        rank_zero_info(f"training ended: saved {callback.last_model_path} at step {trainer.global_step}")

    def on_exception(self, trainer: L.Trainer, pl_module, exception: BaseException) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        callback = trainer.checkpoint_callback
        if not isinstance(exception, SIGTERMException) or callback is None or callback.dirpath is None:
            return
        path = callback.last_model_path or str(Path(callback.dirpath) / "last.ckpt")
        trainer.save_checkpoint(path)
        rank_zero_info(f"SIGTERM: saved {path} at step {trainer.global_step}")
