"""MaskedLM: masked diffusion (MDLM, Sahoo et al. 2024) on the same bidirectional Mamba-2 backbone, the
non-autoregressive baseline that commits tokens one by one.

Training: hide each generated token with probability t (log-linear schedule), predict the hidden ones, weigh
their cross-entropy by the ELBO's 1/t. Sampling: start with every generated token hidden and reveal a
(t - s)/t share of the hidden ones at each step (ancestral sampling), drawn from the model's logits at random
positions or the most confident first; a step that reveals nothing runs no network call (the cache).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dimba.diffusion.config import PromptConfig
from dimba.diffusion.losses import elbo_cross_entropy
from dimba.diffusion.masking import CommitStep, hide, stratified_times, teacher_first_step
from dimba.diffusion.masks import any_position_mask
from dimba.models.blocks import BlockState
from dimba.models.config import MambaConfig
from dimba.models.masked import MaskedDenoiser
from dimba.sampling import ExampleStreams, SamplingConfig
from dimba.training.base import LanguageModelBase, LossOutput, OnStep, unpack
from dimba.training.blockwise import BlockDiffusion
from dimba.training.optim import OptimConfig
from dimba.training.validation import FixedTimeMetrics, FixedTimeValidation, per_example_draws


class MaskedLM(BlockDiffusion, FixedTimeValidation, LanguageModelBase):
    """Masked diffusion LM.

    Args:
        net: the Mamba-2 backbone (`MambaConfig`), bidirectional here.
        prompt: which tokens of a training example are its clean prompt (`PromptConfig`; cfg_dropout unused).
        optim: optimiser and LR schedule. vocab_size, seq_len: from the data module (linked by the CLI).
    """

    kind, short_name, display_name = "masked", "MDLM", "the masked-diffusion baseline (MDLM)"
    sampling_options = frozenset({"steps", "temperature", "top_p", "reveal", "stop_at_eos"})

    def __init__(self, net: MambaConfig = MambaConfig(), prompt: PromptConfig = PromptConfig(),
                 optim: OptimConfig = OptimConfig(), vocab_size: int = 4096, seq_len: int = 128):
        super().__init__(vocab_size, seq_len, optim)
        self.net_config = MambaConfig.from_dict(net)
        self.prompt_config = PromptConfig.from_dict(prompt)
        self.save_configs(net=self.net_config, prompt=self.prompt_config)
        self.check_block_size()
        self.net = MaskedDenoiser(self.net_config, vocab_size)
        self.eval_metrics = FixedTimeMetrics()

    # ------------------------------------------------------------------ training
    def masked_loss(self, tokens: Tensor, t: Tensor, prompt_mask: Tensor, uniforms: Tensor | None = None
                    ) -> LossOutput:
        """Negative ELBO per generated token: sum over hidden positions of CE / t, over the generated count. t: (B,),
        or (B, n_blocks) for block diffusion, where each block is an example of its own."""
        B, L = tokens.shape
        t = self.block_times(t, L)
        n = self.blocks_in(L)
        row_t = t.reshape(-1)
        generated = self.as_rows(~prompt_mask, n)
        hidden = hide(generated, row_t, None if uniforms is None else self.as_rows(uniforms, n))
        noisy = tokens.masked_fill(hidden.reshape(B, L), self.net.mask_id)
        logits = self.as_rows(self.net(noisy) if n == 1 else self.net(noisy, tokens), n)
        rows = self.as_rows(tokens, n)
        ce = F.cross_entropy(logits.transpose(1, 2), rows, reduction="none")  # (rows, L / n)
        count = hidden.sum().clamp(min=1)
        correct = (logits.argmax(-1) == rows) & hidden
        return LossOutput(elbo_cross_entropy(logits, rows, hidden, generated, row_t),
                          {"ce": (ce * hidden).sum() / count, "acc": correct.sum() / count})

    def loss(self, batch) -> LossOutput:
        """Text: random prompts (PromptConfig). Tasks: the question given, the answer generated."""
        tokens, given = unpack(batch)
        B, L_ = tokens.shape
        n = self.blocks_in(L_)
        t = stratified_times(B * n, self.device).view(B, n) if n > 1 else stratified_times(B, self.device)
        prompt = any_position_mask(self.prompt_config, B, L_, self.device) if given is None else given
        return self.masked_loss(tokens, t, prompt)

    def fixed_time_draws(self, tokens: Tensor) -> dict:
        return {"uniforms": per_example_draws(tokens, tokens.shape[1], uniform=True)}

    def loss_at_fixed_time(self, tokens: Tensor, prompt: Tensor, t: Tensor, uniforms: Tensor) -> LossOutput:
        """The ELBO-weighted loss and the CE / accuracy of the hidden tokens, a t share of them hidden."""
        return self.masked_loss(tokens, t, prompt, uniforms)

    @property
    def flops_per_token(self) -> float:
        """6 x parameters (Kaplan et al. 2020)."""
        return 6.0 * self.num_parameters()

    # ------------------------------------------------------------------ sampling
    def generation_call(self):
        return self.net.forward

    def forward_at_length(self, length: int):
        tokens = torch.full((1, length), self.net.mask_id, dtype=torch.long, device=self.device)
        return lambda: self.net(tokens)

    def sample_span(self, tokens: Tensor, given: Tensor, cfg: SamplingConfig, streams: ExampleStreams,
                    on_step: OnStep | None, cache: BlockState | None) -> Tensor:
        """(b, L) tokens with the positions not given hidden -> revealed over cfg.steps steps (with a block cache:
        one block after the cached state)."""
        net = self.generation_fn() if cache is None else (lambda x: self.block_fn("denoise_block")(cache, x))
        commit = CommitStep(cfg.reveal, cfg.temperature, cfg.top_p)
        x = tokens.masked_fill(~given, self.net.mask_id)
        hidden = ~given
        n_hidden = hidden.sum(1)
        times = torch.linspace(1, 0, cfg.steps + 1, dtype=torch.float64)
        for i in range(cfg.steps):
            count = commit.count(hidden, n_hidden, float(times[i + 1]))
            if count.any():  # a step that reveals nothing leaves x as it was: no network call (MDLM's cache)
                x, hidden = commit.step(x, hidden, count, net(x), streams)
            if on_step is not None:
                on_step(i, x.masked_fill(hidden, -1))
        return x

    @torch.no_grad()
    def _two_steps(self, x: Tensor, hidden: Tensor, n_generated: Tensor, t: float, dt: float
                   ) -> tuple[Tensor, Tensor]:
        """The teacher's two steps from t for self-distillation: (target distributions (B, L, V), the first step's
        reveals (B, L)); the draws and reveal order come from the global RNG (a training stream)."""
        draws, reveal = teacher_first_step(self.net(x), hidden, n_generated, t - dt)
        second = torch.softmax(self.net(torch.where(reveal, draws, x)), -1)
        return torch.where(reveal[..., None], F.one_hot(draws, second.shape[-1]).to(second.dtype), second), reveal

    def self_distillation_pair(self, student: MaskedLM, tokens: Tensor, prompt_mask: Tensor, t: float, dt: float
                               ) -> tuple[Tensor, Tensor, Tensor]:
        """(the student's logits at x_t (B, L, V), the teacher's two-step target (B, L, V), the hidden positions
        (B, L)) for `dimba.training.distill`, tokens (B, L) corrupted at time t (one for the batch)."""
        generated = ~prompt_mask
        hidden = hide(generated, torch.full((len(tokens),), t, device=tokens.device))
        x = tokens.masked_fill(hidden, self.net.mask_id)
        target, _ = self._two_steps(x, hidden, generated.sum(1), t, dt)
        return student.net(x), target, hidden

    def block_cache(self, tokens: Tensor, given: Tensor, cfg: SamplingConfig) -> BlockState:
        return self.net.start_blocks()

    def advance_cache(self, cache: BlockState, tokens: Tensor, given: Tensor) -> BlockState:
        return self.block_fn("advance")(cache, tokens)
