"""What DIMBA and the autoregressive baseline share as LightningModules: the tokenizer that travels with
every checkpoint, the optimiser and LR schedule, and parameter counting."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
from torch import nn

from dimba.data.tokenizer import Tokenizer
from dimba.errors import DimbaError
from dimba.models.kernels import mamba_kernels
from dimba.optim import param_groups, warmup_cosine


class LanguageModelBase(L.LightningModule):
    """Subclasses set `self.net` and call save_hyperparameters() with at least vocab_size, seq_len, lr,
    weight_decay, betas, warmup_steps, lr_decay_steps, min_lr_ratio."""

    net: nn.Module

    def __init__(self):
        super().__init__()
        self.tokenizer: Tokenizer | None = None  # from the data module; travels with every checkpoint
        self._compiled_call: Callable | None = None

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "tokenizer"):
            tokenizer = datamodule.tokenizer
            if tokenizer.vocab_size != self.hparams.vocab_size:
                raise DimbaError(f"the data's vocabulary has {tokenizer.vocab_size} tokens but the model "
                                 f"was built for {self.hparams.vocab_size}")
            self.tokenizer = tokenizer

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.tokenizer is not None:
            checkpoint["tokenizer_json"] = self.tokenizer.to_str()
        # The random stream of the training steps (t, noise, prompt lengths, dropout), so that a resumed run
        # draws what the uninterrupted one would have. Nothing else draws from the global RNG between
        # training steps: the data loaders and the samplers have their own generators.
        checkpoint["rng_state"] = {"torch": torch.get_rng_state(),
                                   "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._check_tokenizer(checkpoint)
        self._check_shapes(checkpoint)
        self._pending_rng_state = checkpoint.get("rng_state")

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # Restored here, after Lightning's set-up and the data-loader iterator, right before the first step.
        state = getattr(self, "_pending_rng_state", None)
        if state is not None:
            torch.set_rng_state(state["torch"])
            if state["cuda"] is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda"])
            self._pending_rng_state = None

    def _check_shapes(self, checkpoint: dict) -> None:
        """One clear line instead of load_state_dict's size-mismatch traceback when the config differs."""
        own = self.state_dict()
        saved = checkpoint.get("state_dict", {})
        for key, value in saved.items():
            if key in own and own[key].shape != value.shape:
                raise DimbaError(f"the checkpoint's {key} has shape {tuple(value.shape)} but this configuration "
                                 f"builds {tuple(own[key].shape)}; use the model settings of the run that wrote it")
        missing, extra = sorted(set(own) - set(saved)), sorted(set(saved) - set(own))
        if saved and (missing or extra):
            raise DimbaError(f"the checkpoint does not fit this model: missing {missing[:3]}, unexpected {extra[:3]}; "
                             "use the model settings of the run that wrote it")

    def _check_tokenizer(self, checkpoint: dict) -> None:
        saved = checkpoint.get("tokenizer_json")
        if not saved:
            return
        saved = Tokenizer.from_str(saved)
        # Resuming `fit` (or `validate`) on other data: setup() already took the data module's tokenizer.
        if self.tokenizer is not None and self.tokenizer.fingerprint != saved.fingerprint:
            raise DimbaError(f"the checkpoint was trained with another tokenizer (vocabulary {saved.vocab_size}, "
                             f"this data's: {self.tokenizer.vocab_size}); use the corpus and vocab_size (or "
                             "tokenizer_path) of the run that wrote it")
        self.tokenizer = saved

    def configure_optimizers(self):
        hp = self.hparams
        opt = torch.optim.AdamW(param_groups(self.net, hp.weight_decay), lr=hp.lr, betas=tuple(hp.betas))
        total = hp.lr_decay_steps
        if total is None:
            max_steps = self.trainer.max_steps if self._trainer is not None else -1
            total = max_steps if max_steps and max_steps > 0 else 10_000
        sched = warmup_cosine(opt, hp.warmup_steps, total, hp.min_lr_ratio)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def generation_call(self) -> Callable:
        """The network call that generation repeats (the AR step, the denoiser's forward); subclasses name it."""
        raise NotImplementedError

    def generation_fn(self) -> Callable:
        """What generation calls: generation_call itself, or its torch.compile'd version once
        `compile_generation` has run."""
        return self._compiled_call or self.generation_call()

    def compile_generation(self) -> None:
        """Generate through torch.compile (inductor) from now on: the tens of small ops per mixer and step
        become a few fused kernels, which on a CPU makes batch-1 AR decoding about 3x faster; a baseline
        left uncompiled would flatter DIMBA (issue #5). Inference only. dynamic=False: one graph per
        input shape, compiled at its first call (tens of seconds on a CPU), as a benchmark cell repeats."""
        mamba_kernels()  # probe the optional CUDA kernels now: an import inside the trace would break it
        self._compiled_call = torch.compile(self.generation_call(), dynamic=False)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters())
