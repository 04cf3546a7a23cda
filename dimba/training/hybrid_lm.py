"""HybridLM: DIMBA with the hybrid discrete-continuous corruption (after CANDI, `dimba.diffusion.hybrid`), the
default model: each generated token kept clean with probability 1 - t, the others' embeddings noised at the rank
schedule; the ELBO-weighted cross-entropy of the corrupted tokens; a sampler that commits tokens as it goes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dimba.diffusion.config import DiffusionConfig, HybridConfig, PromptConfig
from dimba.diffusion.hybrid import hybrid_reverse_diffusion
from dimba.diffusion.losses import DiffusionLoss, elbo_cross_entropy
from dimba.diffusion.masking import CommitStep, hide, stratified_times, teacher_first_step
from dimba.diffusion.samplers import DDIMSampler
from dimba.models.config import DenoiserConfig, MambaConfig
from dimba.sampling import ExampleStreams, SamplingConfig
from dimba.training.base import OnStep
from dimba.training.embedding_diffusion import EmbeddingDiffusionLM
from dimba.training.optim import OptimConfig


class HybridLM(EmbeddingDiffusionLM):
    """Hybrid-corruption diffusion LM over token embeddings.

    Args:
        net: the Mamba-2 backbone (`MambaConfig`). denoiser: what the denoiser adds (`DenoiserConfig`).
        diffusion: schedule (default "rank") and loss weights (`DiffusionConfig`); ce_weight weighs the ELBO term.
        hybrid: where tokens lose their latents and where the training signal goes (`HybridConfig`).
        prompt: which tokens of a training example are its clean prompt (`PromptConfig`).
        optim: optimiser and LR schedule (`OptimConfig`).
        vocab_size, seq_len: from the data module (linked by the CLI).
    """

    kind, short_name, display_name = "hybrid", "DIMBA hybrid", "DIMBA (hybrid diffusion)"
    sampling_options = frozenset({"steps", "sampler", "eta", "guidance", "self_condition", "temperature", "top_p",
                                  "x0_temperature", "reveal", "stop_at_eos"})
    uses_uniforms = True

    def __init__(self, net: MambaConfig = MambaConfig(), denoiser: DenoiserConfig = DenoiserConfig(),
                 diffusion: DiffusionConfig = DiffusionConfig(schedule="rank"), hybrid: HybridConfig = HybridConfig(),
                 prompt: PromptConfig = PromptConfig(), optim: OptimConfig = OptimConfig(), vocab_size: int = 4096,
                 seq_len: int = 128):
        hybrid_config = HybridConfig.from_dict(hybrid)
        super().__init__(net, denoiser, diffusion, prompt, optim, vocab_size, seq_len,
                         absorbing=hybrid_config.absorb_above < 1, hybrid=hybrid_config)
        self.hybrid_config = hybrid_config

    def sample_times(self, n: int) -> Tensor:
        """Stratified uniform times (times leaning towards high t were measured no better: docs/results.md)."""
        return stratified_times(n, self.device)

    def absorbed(self, corrupted: Tensor, t: Tensor) -> Tensor | None:
        """Above hybrid.absorb_above a corrupted token has no latent: masked diffusion's regime, where it wins."""
        t_s = self.hybrid_config.absorb_above
        return None if t_s >= 1 else corrupted & (t > t_s)[:, None]

    def corrupt(self, generated: Tensor, t: Tensor, uniforms: Tensor | None) -> Tensor:
        return hide(generated, t, uniforms)  # each generated position with probability t

    def objective(self, logits: Tensor, parts: DiffusionLoss, tokens: Tensor, corrupted: Tensor, generated: Tensor,
                  t: Tensor) -> Tensor:
        cfg = self.diffusion_config
        ce = elbo_cross_entropy(logits, tokens, corrupted, generated, t) if self.hybrid_config.weighting == "elbo" \
            else parts.ce  # the mean CE of the corrupted tokens, unweighted
        return cfg.ce_weight * ce + cfg.mse_weight * parts.mse

    def sample_span(self, tokens: Tensor, given: Tensor, cfg: SamplingConfig, streams: ExampleStreams,
                    on_step: OnStep | None, cache: dict | None) -> Tensor:
        """Commit the positions not given over cfg.steps steps, the others diffusing as latents."""
        sampler = DDIMSampler.named(cfg.sampler, self.schedule, cfg.eta)
        commit = CommitStep(cfg.reveal, cfg.temperature, cfg.top_p)
        return hybrid_reverse_diffusion(self.denoiser(given, cfg, cache), sampler, self.guidance(cfg), commit,
                                        cfg.steps, cfg.self_condition and self.net.self_conditioning, streams, tokens,
                                        given, on_step)

    def self_distillation_pair(self, student: HybridLM, tokens: Tensor, prompt_mask: Tensor, t: float, dt: float
                               ) -> tuple[Tensor, Tensor, Tensor]:
        """(the student's logits at x_t (B, L, V), the teacher's two-step target (B, L, V), the hidden positions
        (B, L)) for `dimba.training.distill`: tokens (B, L) corrupted at time t (one for the batch); the teacher's
        two steps are its sampler's (reveals drawn at temperature 1, latents moved by DDIM, its estimate fed back),
        its draws from the global RNG (a training stream)."""
        B = len(tokens)
        generated = ~prompt_mask
        t_now = torch.full((B,), t, device=tokens.device)
        hidden = hide(generated, t_now)
        x_t = self.schedule.q_sample(self.net.embed(tokens), t_now, torch.randn(*tokens.shape, self.net.d_embed,
                                                                                device=tokens.device))
        with torch.no_grad():
            table = self.net.embedding_table()
            teacher = self.denoiser(prompt_mask, SamplingConfig())
            logits, x0_hat = teacher(x_t, t_now, tokens, ~hidden, None, None)
            draws, reveal = teacher_first_step(logits, hidden, generated.sum(1), t - dt)
            revealed, still = torch.where(reveal, draws, tokens), hidden & ~reveal
            x_next = torch.where(still[..., None], DDIMSampler(self.schedule).step(x_t, x0_hat, t, t - dt),
                                 table[revealed])
            self_cond = torch.where(still[..., None], x0_hat, table[revealed])
            second, _ = teacher(x_next, torch.full((B,), t - dt, device=tokens.device), revealed, ~still, self_cond,
                                None)
            target = torch.where(reveal[..., None], F.one_hot(draws, second.shape[-1]).to(second.dtype),
                                 torch.softmax(second, -1))
        own = student.denoiser(prompt_mask, SamplingConfig())
        self_cond = None
        if student.net.self_conditioning and torch.rand(()) < student.diffusion_config.self_cond_prob:
            with torch.no_grad():  # as in training: a first estimate fed back on some batches
                self_cond = own(x_t, t_now, tokens, ~hidden, None, None)[1]
        return own(x_t, t_now, tokens, ~hidden, self_cond, None)[0], target, hidden
