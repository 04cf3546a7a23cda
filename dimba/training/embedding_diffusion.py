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
from dimba.training.blockwise import BlockDiffusion
from dimba.training.optim import OptimConfig
from dimba.training.validation import FixedTimeMetrics, FixedTimeValidation, per_example_draws


@dataclass
class DiffusionStepLoss(LossOutput):
    """The loss of one batch, with what a time warp learns from: each example's t and cross-entropy."""

    t: Tensor | None = None  # (B,)
    per_example_ce: Tensor | None = None  # (B,)


class EmbeddingDiffusionLM(BlockDiffusion, FixedTimeValidation, LanguageModelBase):
    """Base of the DIMBA kinds. Subclasses call `__init__` with their extra config objects (saved with the rest)
    and implement `sample_times`, `corrupt`, `objective` and `sample_span`."""

    noises_embeddings = True  # `dimba eval --diagnose` measures the noise on the embeddings
    uses_uniforms = False  # the corruption draws a uniform per position (fixed per example in validation)

    def __init__(self, net: MambaConfig, denoiser: DenoiserConfig, diffusion: DiffusionConfig,
                 prompt: PromptConfig, optim: OptimConfig, vocab_size: int, seq_len: int, absorbing: bool = False,
                 **more: Config):
        super().__init__(vocab_size, seq_len, optim)
        self.net_config = MambaConfig.from_dict(net)
        self.denoiser_config = DenoiserConfig.from_dict(denoiser)
        self.diffusion_config = DiffusionConfig.from_dict(diffusion)
        self.prompt_config = PromptConfig.from_dict(prompt)
        self.save_configs(net=self.net_config, denoiser=self.denoiser_config, diffusion=self.diffusion_config,
                          prompt=self.prompt_config, **more)
        self.check_block_size()
        self.net = DimbaDenoiser(self.net_config, self.denoiser_config, vocab_size, absorbing)
        self.schedule = NoiseSchedule(self.diffusion_config.schedule, log_snr_shift=self.diffusion_config.log_snr_shift,
                                      d_embed=self.denoiser_config.d_embed)
        self.eval_metrics = FixedTimeMetrics()

    # ------------------------------------------------------------------ what a kind defines
    def sample_times(self, n: int) -> Tensor:
        """(n,) training times in (0, 1], one per example (per block with block diffusion)."""
        raise NotImplementedError

    def corrupt(self, generated: Tensor, t: Tensor, uniforms: Tensor | None) -> Tensor:
        """(B, L) bool: the generated positions (B, L) whose embeddings are noised at t (B,); the others are given
        clean. uniforms: optional (B, L) draws deciding it."""
        raise NotImplementedError

    def objective(self, logits: Tensor, parts: DiffusionLoss, tokens: Tensor, corrupted: Tensor, generated: Tensor,
                  t: Tensor) -> Tensor:
        """The scalar to optimise, from the logits (B, L, V) and the loss parts over the corrupted positions."""
        raise NotImplementedError

    def absorbed(self, corrupted: Tensor, t: Tensor) -> Tensor | None:
        """(B, L) bool: the corrupted positions (B, L) at times t (B,) that have no latent; None: none has."""
        return None

    # ------------------------------------------------------------------ training
    def skip_logits(self, x_t: Tensor, t: Tensor, absorbed: Tensor | None) -> Tensor | None:
        """(B, L, V) exact Gaussian likelihood of the latents x_t (B, L, d) under each token at t (B,), added to the
        network's logits (diffusion.skip_logits), or None; zero at the `absorbed` positions (B, L): no latent, no
        likelihood."""
        if not self.diffusion_config.skip_logits:
            return None
        bias = likelihood_logits(x_t, self.net.embedding_table(), self.schedule.alpha_bar(t))
        return bias if absorbed is None else bias.masked_fill(absorbed[..., None], 0.0)

    def denoising_loss(self, tokens: Tensor, t: Tensor, prompt_mask: Tensor, drop_prompt: Tensor | None,
                       self_cond_prob: float, noise: Tensor | None = None, uniforms: Tensor | None = None
                       ) -> DiffusionStepLoss:
        """The loss of denoising `tokens` (B, L) corrupted at t, with the prompt_mask positions given. t: (B,), or
        (B, n_blocks) for block diffusion (each block its own time; a (B,) t is shared by an example's blocks).
        noise (B, L, d) and uniforms (B, L): optional draws of the corruption (fixed ones in validation).
        The corruption and the loss treat each block as an example of its own (`as_rows`)."""
        cfg = self.diffusion_config
        B, L = tokens.shape
        t = self.block_times(t, L)
        n = self.blocks_in(L)
        row_t = t.reshape(-1)  # (B * n_blocks,)
        x0 = self.net.embed(tokens)
        noise = torch.randn_like(x0) if noise is None else noise
        x_t = self.schedule.q_sample(self.as_rows(x0, n), row_t, self.as_rows(noise, n))
        generated = self.as_rows(~prompt_mask, n)
        corrupted = self.corrupt(generated, row_t, None if uniforms is None else self.as_rows(uniforms, n))
        absorbed = self.absorbed(corrupted, row_t)
        bias = self.skip_logits(x_t, row_t, absorbed)
        x_t, corrupted = x_t.reshape(B, L, -1), corrupted.reshape(B, L)
        bias = None if bias is None else bias.reshape(B, L, -1)
        absorbed = None if absorbed is None else absorbed.reshape(B, L)

        def net(self_cond):
            return self.net(x_t, t, tokens, prompt_mask, self_cond, drop_prompt, ~corrupted, bias, absorbed)

        self_cond = None
        # Draw only when it can matter: validation (prob 0) must not consume the training's random stream.
        if self.net.self_conditioning and self_cond_prob > 0 and torch.rand(()) < self_cond_prob:
            with torch.no_grad():  # a first estimate, fed back without gradient (Chen et al. 2022)
                self_cond = net(None)[1].detach()
        logits, x0_hat = net(self_cond)
        logits, x0_hat, x0, rows, corrupted = (self.as_rows(v, n) for v in (logits, x0_hat, x0, tokens, corrupted))
        parts = diffusion_loss(logits, x0_hat, x0, rows, corrupted, cfg.mse_weight, cfg.ce_weight)
        total = self.objective(logits, parts, rows, corrupted, generated, row_t)
        return DiffusionStepLoss(total=total, metrics={"mse": parts.mse, "ce": parts.ce, "acc": parts.accuracy},
                                 t=row_t, per_example_ce=parts.per_example_ce)

    def loss(self, batch) -> DiffusionStepLoss:
        """Text: random prompts (PromptConfig). Tasks: the question given, the answer generated."""
        tokens, given = unpack(batch)
        B, L_ = tokens.shape
        n = self.blocks_in(L_)
        t = self.sample_times(B * n).view(B, n) if n > 1 else self.sample_times(B)
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

    def denoiser(self, given: Tensor, cfg: SamplingConfig, cache: dict | None = None) -> Denoise:
        """The network as the samplers call it (`dimba.diffusion.guidance.Denoise`), with the given positions
        (B, L) as the prompt, the skip logits added, and self-conditioning off when the model or cfg has none.
        With a block cache (`block_cache`), the positions are one block after the cached state."""
        net = self.generation_fn()
        use_self_cond = cfg.self_condition and self.net.self_conditioning

        def denoise(x_t, t, tokens, clean, self_cond, drop):
            self_cond = self_cond if use_self_cond else None
            absorbed = self.absorbed(~clean, t)
            bias = self.skip_logits(x_t, t, absorbed)
            if cache is None:
                return net(x_t, t, tokens, given, self_cond, drop, clean, bias, absorbed)
            return self.block_fn("denoise_block")(cache[drop is not None], x_t, t, tokens, given, self_cond, clean,
                                                  bias, absorbed)

        return denoise

    def block_cache(self, tokens: Tensor, given: Tensor, cfg: SamplingConfig) -> dict:
        """One state per guidance branch (conditional; unconditional when guidance != 1), keyed by whether the
        prompt is dropped; the prompt's encoding reads every given position of tokens (B, L)."""
        cache = {False: self.net.start_blocks(tokens, given)}
        if cfg.guidance != 1.0:
            cache[True] = self.net.start_blocks(tokens, given, torch.ones_like(given[:, 0]))
        return cache

    def advance_cache(self, cache: dict, tokens: Tensor, given: Tensor) -> dict:
        return {dropped: self.block_fn("advance")(state, tokens, given) for dropped, state in cache.items()}

    def guidance(self, cfg: SamplingConfig) -> Guidance:
        if cfg.x0_temperature != 1.0 and self.net.x0_param != "softmax":
            raise ConfigError("x0_temperature needs a model with x0_param 'softmax' (this one regresses x0 directly)")
        return Guidance(cfg.guidance, cfg.x0_temperature, self.net.embedding_table())
