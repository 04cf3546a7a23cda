"""What both DIMBA kinds share (the Gaussian `DimbaLM` and the hybrid `HybridLM`): the denoiser over token
embeddings, a noise schedule, the skip logits, the denoising loss, and the network as samplers call it.

A kind says which generated positions its corruption noises (`corrupt`), how it draws training times
(`sample_times`), what it optimises (`objective`) and how it samples (`fill_group`); none of the pieces it
composes (schedule, losses, samplers, network) knows about the others.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dimba.config import Config
from dimba.diffusion.config import DiffusionConfig, PromptConfig
from dimba.diffusion.guidance import Denoise, Guidance
from dimba.diffusion.hybrid import likelihood_logits
from dimba.diffusion.losses import DiffusionLoss, diffusion_loss
from dimba.diffusion.masks import training_prompt
from dimba.diffusion.schedules import NoiseSchedule
from dimba.errors import ConfigError
from dimba.models.config import DenoiserConfig, MambaConfig
from dimba.models.denoiser import DimbaDenoiser
from dimba.sampling import SamplingConfig
from dimba.training.base import LanguageModelBase, LossOutput, unpack
from dimba.training.optim import OptimConfig
from dimba.training.validation import FixedTimeMetrics, FixedTimeValidation, per_example_draws


@dataclass
class DiffusionStepLoss(LossOutput):
    """The loss of one batch, with what a time warp learns from: each example's t and cross-entropy."""

    t: Tensor | None = None  # (B,)
    per_example_ce: Tensor | None = None  # (B,)


class EmbeddingDiffusionLM(FixedTimeValidation, LanguageModelBase):
    """Base of the DIMBA kinds. Subclasses call `__init__` with their extra config objects (saved with the rest)
    and implement `sample_times`, `corrupt`, `objective` and `fill_group`."""

    noises_embeddings = True  # `dimba eval --diagnose` measures the noise on the embeddings
    uses_uniforms = False  # the corruption draws a uniform per position (fixed per example in validation)

    def __init__(self, net: MambaConfig, denoiser: DenoiserConfig, diffusion: DiffusionConfig,
                 prompt: PromptConfig, optim: OptimConfig, vocab_size: int, seq_len: int, **more: Config):
        super().__init__(vocab_size, seq_len, optim)
        self.net_config = MambaConfig.from_dict(net)
        self.denoiser_config = DenoiserConfig.from_dict(denoiser)
        self.diffusion_config = DiffusionConfig.from_dict(diffusion)
        self.prompt_config = PromptConfig.from_dict(prompt)
        self.save_configs(net=self.net_config, denoiser=self.denoiser_config, diffusion=self.diffusion_config,
                          prompt=self.prompt_config, **more)
        self.net = DimbaDenoiser(self.net_config, self.denoiser_config, vocab_size)
        self.schedule = NoiseSchedule(self.diffusion_config.schedule, log_snr_shift=self.diffusion_config.log_snr_shift,
                                      d_embed=self.denoiser_config.d_embed)
        self.eval_metrics = FixedTimeMetrics()

    # ------------------------------------------------------------------ what a kind defines
    def sample_times(self, batch: int) -> Tensor:
        """(B,) training times in (0, 1]."""
        raise NotImplementedError

    def corrupt(self, generated: Tensor, t: Tensor, uniforms: Tensor | None) -> Tensor:
        """(B, L) bool: the generated positions (B, L) whose embeddings are noised at t (B,); the others are given
        clean. uniforms: optional (B, L) draws deciding it."""
        raise NotImplementedError

    def objective(self, logits: Tensor, parts: DiffusionLoss, tokens: Tensor, corrupted: Tensor, generated: Tensor,
                  t: Tensor) -> Tensor:
        """The scalar to optimise, from the logits (B, L, V) and the loss parts over the corrupted positions."""
        raise NotImplementedError

    # ------------------------------------------------------------------ training
    def skip_logits(self, x_t: Tensor, t: Tensor) -> Tensor | None:
        """(B, L, V) exact Gaussian likelihood of the latents x_t (B, L, d) under each token at t (B,), added to the
        network's logits (diffusion.skip_logits), or None."""
        if not self.diffusion_config.skip_logits:
            return None
        return likelihood_logits(x_t, self.net.embedding_table(), self.schedule.alpha_bar(t))

    def denoising_loss(self, tokens: Tensor, t: Tensor, prompt_mask: Tensor, drop_prompt: Tensor | None,
                       self_cond_prob: float, noise: Tensor | None = None, uniforms: Tensor | None = None
                       ) -> DiffusionStepLoss:
        """The loss of denoising `tokens` (B, L) corrupted at t (B,), with the prompt_mask positions given.
        noise (B, L, d) and uniforms (B, L): optional draws of the corruption (fixed ones in validation)."""
        cfg = self.diffusion_config
        x0 = self.net.embed(tokens)
        noise = torch.randn_like(x0) if noise is None else noise
        x_t = self.schedule.q_sample(x0, t, noise)
        bias = self.skip_logits(x_t, t)
        generated = ~prompt_mask
        corrupted = self.corrupt(generated, t, uniforms)

        def net(self_cond):
            return self.net(x_t, t, tokens, prompt_mask, self_cond, drop_prompt, ~corrupted, bias)

        self_cond = None
        # Draw only when it can matter: validation (prob 0) must not consume the training's random stream.
        if self.net.self_conditioning and self_cond_prob > 0 and torch.rand(()) < self_cond_prob:
            with torch.no_grad():  # a first estimate, fed back without gradient (Chen et al. 2022)
                self_cond = net(None)[1].detach()
        logits, x0_hat = net(self_cond)
        parts = diffusion_loss(logits, x0_hat, x0, tokens, corrupted, cfg.mse_weight, cfg.ce_weight)
        total = self.objective(logits, parts, tokens, corrupted, generated, t)
        return DiffusionStepLoss(total=total, metrics={"mse": parts.mse, "ce": parts.ce, "acc": parts.accuracy},
                                 t=t, per_example_ce=parts.per_example_ce)

    def loss(self, batch) -> DiffusionStepLoss:
        """Text: random prompts (PromptConfig). Tasks: the question given, the answer generated."""
        tokens, given = unpack(batch)
        B, L_ = tokens.shape
        t = self.sample_times(B)
        if given is None:
            prompt_mask, drop = training_prompt(self.prompt_config, B, L_, self.device)
        else:
            prompt_mask, drop = given, torch.rand(B, device=self.device) < self.prompt_config.cfg_dropout
        return self.denoising_loss(tokens, t, prompt_mask, drop, self.diffusion_config.self_cond_prob)

    def fixed_time_draws(self, tokens: Tensor) -> dict:
        L_ = tokens.shape[1]
        return {"noise": per_example_draws(tokens, L_, self.denoiser_config.d_embed),
                "uniforms": per_example_draws(tokens, L_, uniform=True) if self.uses_uniforms else None}

    def loss_at_fixed_time(self, tokens: Tensor, prompt: Tensor, t: Tensor, noise: Tensor, uniforms: Tensor | None
                           ) -> DiffusionStepLoss:
        return self.denoising_loss(tokens, t, prompt, None, self_cond_prob=0.0, noise=noise, uniforms=uniforms)

    @property
    def flops_per_token(self) -> float:
        """Approximate training FLOPs per token: 6 x parameters (Kaplan et al. 2020), plus 2 x parameters for
        the extra no-grad forward that self-conditioning runs on a fraction of the batches."""
        extra = self.diffusion_config.self_cond_prob if self.net.self_conditioning else 0.0
        return (6 + 2 * extra) * self.num_parameters()

    # ------------------------------------------------------------------ sampling
    def generation_call(self):
        return self.net.forward  # a bound method: compiling it registers no submodule in the checkpoint

    def forward_at_length(self, length: int):
        x = torch.randn(1, length, self.denoiser_config.d_embed, device=self.device)
        t = torch.full((1,), 0.5, device=self.device)
        tokens = torch.zeros(1, length, dtype=torch.long, device=self.device)
        return lambda: self.net(x, t, tokens, torch.zeros_like(tokens, dtype=torch.bool))

    def denoiser(self, given: Tensor, cfg: SamplingConfig) -> Denoise:
        """The network as the samplers call it (`dimba.diffusion.guidance.Denoise`), with the given positions
        (B, L) as the prompt, the skip logits added, and self-conditioning off when the model or cfg has none."""
        net = self.generation_fn()
        use_self_cond = cfg.self_condition and self.net.self_conditioning

        def denoise(x_t, t, tokens, clean, self_cond, drop):
            return net(x_t, t, tokens, given, self_cond if use_self_cond else None, drop, clean,
                       self.skip_logits(x_t, t))

        return denoise

    def guidance(self, cfg: SamplingConfig) -> Guidance:
        if cfg.x0_temperature != 1.0 and self.net.x0_param != "softmax":
            raise ConfigError("x0_temperature needs a model with x0_param 'softmax' (this one regresses x0 directly)")
        return Guidance(cfg.guidance, cfg.x0_temperature, self.net.embedding_table())
