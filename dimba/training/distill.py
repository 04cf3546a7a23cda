"""Fewer sampling steps by self-distillation through time (SDTT, Deschenaux & Gulcehre 2024, arXiv 2410.21035),
for the committing samplers (masked diffusion, the hybrid DIMBA).

A teacher sampling with N steps is distilled into a student (initialised as the teacher) that samples with N/2:
at a time t of the student's grid, from a corrupted training sequence, the teacher takes two of its steps
(t -> t - 1/N -> t - 2/N) and the student one (t -> t - 2/N). For each position hidden at t the target is the
teacher's two-step outcome: the token its first step revealed there (one-hot), or else its second step's
distribution; the student's distribution at t is pulled towards it (KL(target || student) over the hidden
positions). Repeated (`dimba distill` on the student), 32 steps become 16, then 8.

The checkpoint the run writes is the student's own kind (the same hyper-parameters as the teacher): it loads
everywhere a checkpoint of that kind does.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor

from dimba.diffusion.masks import training_prompt
from dimba.errors import ConfigError, DimbaError
from dimba.training.base import LanguageModelBase, LossOutput, unpack
from dimba.training.checkpoint import load_for_inference
from dimba.training.optim import OptimConfig


class Distiller(LanguageModelBase):
    """Trains a student copy of `teacher` (a checkpoint or export folder of a committing kind) to take one step
    where the teacher takes two.

    Args:
        teacher: the model to distil: a checkpoint written by `dimba fit` (or `dimba distill`), or an export folder.
        teacher_steps: N, the teacher's step count; the student samples with N / 2.
        optim: optimiser and LR schedule of the student.
        vocab_size, seq_len: from the data module (linked by the CLI); they must be the teacher's.
    """

    def __init__(self, teacher: str, teacher_steps: int = 32, optim: OptimConfig = OptimConfig(lr=1e-4),
                 vocab_size: int = 4096, seq_len: int = 128):
        super().__init__(vocab_size, seq_len, optim)
        if teacher_steps < 2 or teacher_steps % 2:
            raise ConfigError(f"teacher_steps must be even and >= 2 (the student takes half), got {teacher_steps}")
        model = load_for_inference(teacher, "cpu")
        if not hasattr(model, "self_distillation_pair"):
            raise DimbaError(f"{model.display_name} has no committing sampler to distil (masked diffusion and the "
                             "hybrid DIMBA have)")
        if model.block_size:
            raise DimbaError("distilling a block model is not supported: its steps are per block")
        if (model.vocab_size, model.seq_len) != (vocab_size, seq_len):
            raise DimbaError(f"the data gives vocabulary {vocab_size} and seq_len {seq_len}; the teacher was trained "
                             f"with {model.vocab_size} and {model.seq_len}")
        self.teacher_steps = teacher_steps
        # The student is a model of the teacher's kind whose network this module trains; the teacher is frozen and
        # kept out of the state dict (object.__setattr__: not a submodule), so checkpoints hold the student only.
        student = copy.deepcopy(model).train()
        object.__setattr__(self, "teacher", model.requires_grad_(False).eval())
        object.__setattr__(self, "student", student)
        self.net = student.net
        self.tokenizer = model.tokenizer
        # Checkpoints carry the student kind's hyper-parameters: they load as that kind, everywhere.
        self.save_hyperparameters(dict(model.hparams))

    @property
    def sampling_options(self) -> frozenset[str]:
        return self.student.sampling_options

    @property
    def display_name(self) -> str:
        return f"{self.student.display_name}, distilled"

    def setup(self, stage: str) -> None:
        super().setup(stage)
        self.teacher.to(self.device)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        self.student.on_save_checkpoint(checkpoint)  # the kind's own extras
        checkpoint["distillation"] = {"teacher_steps": self.teacher_steps, "student_steps": self.teacher_steps // 2}

    def loss(self, batch) -> LossOutput:
        """KL(teacher's two steps || student's one step) over the positions hidden at a time of the student's grid
        (one per batch: the DDIM update of the hybrid's latents takes one time)."""
        tokens, given = unpack(batch)
        B, L = tokens.shape
        if given is None:
            given, _ = training_prompt(self.student.prompt_config, B, L, self.device)
        dt = 1.0 / self.teacher_steps
        t = 1.0 - 2 * dt * int(torch.randint(0, self.teacher_steps // 2, ()))
        logits, target, hidden = self.teacher.self_distillation_pair(self.student, tokens, given, t, dt)
        kl = (target * (torch.log(target.clamp(min=1e-12)) - F.log_softmax(logits.float(), dim=-1))).sum(-1)
        count = hidden.sum().clamp(min=1)
        loss = (kl * hidden).sum() / count
        agree = ((logits.argmax(-1) == target.argmax(-1)) & hidden).sum() / count
        return LossOutput(loss, {"kl": loss.detach(), "argmax_agreement": agree})

    @property
    def flops_per_token(self) -> float:
        """Student forward and backward (6 x parameters) and two teacher forwards (4 x)."""
        return 10.0 * self.num_parameters()

    def fill_group(self, tokens: Tensor, given: Tensor, cfg, streams, on_step, on_commit=None) -> Tensor:
        return self.student.fill_group(tokens, given, cfg, streams, on_step, on_commit)
