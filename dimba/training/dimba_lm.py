"""DimbaLM: Gaussian diffusion over token embeddings with the bidirectional Mamba-2 denoiser, for Lightning.

It composes a noise schedule, the learned time warp, the denoiser, the losses and the sampler; none of them
knows about the others.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dimba.diffusion.config import DiffusionConfig, PromptConfig
from dimba.diffusion.generate import reverse_diffusion
from dimba.diffusion.hybrid import hybrid_reverse_diffusion, likelihood_logits
from dimba.diffusion.losses import diffusion_loss, elbo_cross_entropy
from dimba.diffusion.masking import hide, stratified_times
from dimba.diffusion.masks import training_prompt
from dimba.diffusion.samplers import DDIMSampler
from dimba.diffusion.schedules import NoiseSchedule
from dimba.diffusion.time_warp import TimeWarp
from dimba.errors import ConfigError
from dimba.models.config import DenoiserConfig, MambaConfig
from dimba.models.denoiser import DimbaDenoiser
from dimba.sampling import ExampleStreams, SamplingConfig
from dimba.training.base import LanguageModelBase, LossOutput, OnStep, unpack
from dimba.training.optim import OptimConfig
from dimba.training.validation import FixedTimeMetrics, FixedTimeValidation, per_example_draws

T_MIN = 1e-3  # t = 0 exactly is a noiseless, uninformative training example


@dataclass
class DiffusionStepLoss(LossOutput):
    """The loss of one batch, with what the time warp learns from: each example's t and cross-entropy."""

    t: Tensor | None = None  # (B,)
    per_example_ce: Tensor | None = None  # (B,)


class DimbaLM(FixedTimeValidation, LanguageModelBase):
    """Diffusion LM over token embeddings.

    Args:
        net: the Mamba-2 backbone (`MambaConfig`). denoiser: what the denoiser adds (`DenoiserConfig`).
        diffusion: schedule, time warp and loss weights (`DiffusionConfig`).
        prompt: which tokens of a training example are its clean prompt (`PromptConfig`).
        optim: optimiser and LR schedule (`OptimConfig`).
        vocab_size, seq_len: from the data module (linked by the CLI).
    """

    kind, short_name = "dimba", "DIMBA"

    def __init__(self, net: MambaConfig = MambaConfig(), denoiser: DenoiserConfig = DenoiserConfig(),
                 diffusion: DiffusionConfig = DiffusionConfig(), prompt: PromptConfig = PromptConfig(),
                 optim: OptimConfig = OptimConfig(), vocab_size: int = 4096, seq_len: int = 128):
        super().__init__(vocab_size, seq_len, optim)
        self.net_config = MambaConfig.from_dict(net)
        self.denoiser_config = DenoiserConfig.from_dict(denoiser)
        self.diffusion_config = DiffusionConfig.from_dict(diffusion)
        self.prompt_config = PromptConfig.from_dict(prompt)
        self.save_configs(net=self.net_config, denoiser=self.denoiser_config, diffusion=self.diffusion_config,
                          prompt=self.prompt_config)
        self.net = DimbaDenoiser(self.net_config, self.denoiser_config, vocab_size)
        self.hybrid = self.diffusion_config.corruption == "hybrid"
        self.schedule = NoiseSchedule(self.diffusion_config.schedule, log_snr_shift=self.diffusion_config.log_snr_shift,
                                      d_embed=self.denoiser_config.d_embed)
        self.warp = TimeWarp(window=self.diffusion_config.warp_window) if self.diffusion_config.time_warp else None
        self.eval_metrics = FixedTimeMetrics()

    # ------------------------------------------------------------------ training
    @property
    def display_name(self) -> str:
        return f"DIMBA ({self.diffusion_config.corruption} diffusion)"

    @property
    def sampling_options(self) -> frozenset[str]:
        if self.hybrid:
            return frozenset({"steps", "sampler", "eta", "guidance", "self_condition", "temperature", "top_p",
                              "x0_temperature", "reveal", "latent_target", "step_spacing"})
        return frozenset({"steps", "sampler", "eta", "guidance", "self_condition", "clamp_from", "temperature",
                          "top_p", "x0_temperature", "warped_steps"})

    def sample_times(self, batch: int) -> Tensor:
        if self.hybrid:  # uniform: the ELBO's 1/t weight already says where the loss matters
            return stratified_times(batch, self.device)
        u = torch.rand(batch, device=self.device)
        t = self.warp.warp(u) if self.warp is not None else u
        return t.clamp(T_MIN, 1.0)

    def network_inputs(self, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor | None]:
        """(what the network reads for the latents x_t (B, L, d) at t (B,), the logit bias or None): x_t or its
        posterior mean E[e | x_t] under a flat prior (diffusion.latent_input), and the likelihood of x_t under
        each token as skip logits (diffusion.skip_logits). Both come from the same exact Gaussian likelihood."""
        cfg = self.diffusion_config
        if cfg.latent_input == "raw" and not cfg.skip_logits:
            return x_t, None
        table = self.net.embedding_table()
        likelihood = likelihood_logits(x_t, table, self.schedule.alpha_bar(t))
        x_in = torch.softmax(likelihood, dim=-1) @ table if cfg.latent_input == "posterior" else x_t
        return x_in, likelihood if cfg.skip_logits else None

    def denoising_loss(self, tokens: Tensor, t: Tensor, prompt_mask: Tensor, drop_prompt: Tensor | None,
                       self_cond_prob: float, noise: Tensor | None = None, uniforms: Tensor | None = None
                       ) -> DiffusionStepLoss:
        """The loss of denoising `tokens` (B, L) corrupted at t (B,), with the prompt_mask positions given.

        Gaussian corruption noises every generated position; the hybrid one keeps each clean with probability
        1 - t (uniforms: optional (B, L) draws deciding which) and weighs the corrupted tokens' CE by 1/t."""
        cfg = self.diffusion_config
        x0 = self.net.embed(tokens)
        noise = torch.randn_like(x0) if noise is None else noise
        x_t, bias = self.network_inputs(self.schedule.q_sample(x0, t, noise), t)
        generated = ~prompt_mask
        corrupted = hide(generated, t, uniforms) if self.hybrid else generated

        def net(self_cond):
            return self.net(x_t, t, tokens, prompt_mask, self_cond, drop_prompt, ~corrupted, bias)

        self_cond = None
        # Draw only when it can matter: validation (prob 0) must not consume the training's random stream.
        if self.net.self_conditioning and self_cond_prob > 0 and torch.rand(()) < self_cond_prob:
            with torch.no_grad():  # a first estimate, fed back without gradient (Chen et al. 2022)
                self_cond = net(None)[1].detach()
        logits, x0_hat = net(self_cond)
        parts = diffusion_loss(logits, x0_hat, x0, tokens, corrupted, cfg.mse_weight, cfg.ce_weight)
        total = parts.total
        if self.hybrid:
            total = cfg.ce_weight * elbo_cross_entropy(logits, tokens, corrupted, generated, t) + \
                cfg.mse_weight * parts.mse
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

    def training_step(self, batch, batch_idx: int) -> Tensor:
        out = self.loss(batch)
        if self.warp is not None:
            t_seen, ce_seen = out.t.detach(), out.per_example_ce.detach()
            if self._trainer is not None and self.trainer.world_size > 1:
                # Every rank folds in every rank's losses, so the warps stay identical under DDP.
                t_seen, ce_seen = self.all_gather(t_seen), self.all_gather(ce_seen)
            self.warp.update(t_seen.flatten(), ce_seen.flatten())
        self.log_training(out, len(out.t))
        return out.total

    def fixed_time_draws(self, tokens: Tensor) -> dict:
        L_ = tokens.shape[1]
        return {"noise": per_example_draws(tokens, L_, self.denoiser_config.d_embed),
                "uniforms": per_example_draws(tokens, L_, uniform=True) if self.hybrid else None}

    def loss_at_fixed_time(self, tokens: Tensor, prompt: Tensor, t: Tensor, noise: Tensor, uniforms: Tensor | None
                           ) -> DiffusionStepLoss:
        return self.denoising_loss(tokens, t, prompt, None, self_cond_prob=0.0, noise=noise, uniforms=uniforms)

    # ------------------------------------------------------------------ checkpoint extras
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.warp is not None:
            checkpoint["time_warp"] = self.warp.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        if self.warp is not None and checkpoint.get("time_warp") is not None:
            self.warp.load_state_dict(checkpoint["time_warp"])

    # ------------------------------------------------------------------ sampling
    def generation_call(self):
        return self.net.forward  # a bound method: compiling it registers no submodule in the checkpoint

    def forward_at_length(self, length: int):
        x = torch.randn(1, length, self.denoiser_config.d_embed, device=self.device)
        t = torch.full((1,), 0.5, device=self.device)
        tokens = torch.zeros(1, length, dtype=torch.long, device=self.device)
        return lambda: self.net(x, t, tokens, torch.zeros_like(tokens, dtype=torch.bool))

    def describe(self, cfg: SamplingConfig) -> str:
        """E.g. "DIMBA ddim 32 steps, guidance 3.0" (the labels of docs/results.md), "DIMBA hybrid ddim 32 steps,
        reveal random"."""
        return (f"DIMBA {'hybrid ' if self.hybrid else ''}{cfg.sampler} {cfg.steps} steps"
                + (f", reveal {cfg.reveal}" if self.hybrid else "")
                + (f", latents towards the {cfg.latent_target}" if cfg.latent_target != "mean" else "")
                + (f", {cfg.step_spacing} steps" if cfg.step_spacing != "uniform" else "")
                + (f", guidance {cfg.guidance}" if cfg.guidance != 1 else "")
                + (f", x0 temperature {cfg.x0_temperature}" if cfg.x0_temperature != 1 else "")
                + (f", temperature {cfg.temperature}" if cfg.temperature != 1 else "")
                + (f", top-p {cfg.top_p}" if cfg.top_p < 1 else "")
                + ("" if cfg.self_condition else ", no self-cond"))

    def fill_group(self, tokens: Tensor, given: Tensor, cfg: SamplingConfig, streams: ExampleStreams,
                   on_step: OnStep | None) -> Tensor:
        """Reverse diffusion over (b, L) with the given positions clean (and feeding the prompt encoder)."""
        if cfg.x0_temperature != 1.0 and self.net.x0_param != "softmax":
            raise ConfigError("x0_temperature needs a model with x0_param 'softmax' (this one regresses x0 directly)")
        sampler = DDIMSampler.named(cfg.sampler, self.schedule, cfg.eta)
        use_self_cond = cfg.self_condition and self.net.self_conditioning
        net = self.generation_fn()
        shape = (*tokens.shape, self.denoiser_config.d_embed)
        table = self.net.embedding_table()
        if self.hybrid:
            def denoise(x_t, t, current, clean, self_cond, drop):
                x_in, bias = self.network_inputs(x_t, t)
                return net(x_in, t, current, given, self_cond if use_self_cond else None, drop, clean, bias)

            return hybrid_reverse_diffusion(denoise, sampler, table, cfg, streams, tokens, given, on_step)

        def denoise(x_t, t, self_cond, drop):
            x_in, bias = self.network_inputs(x_t, t)
            return net(x_in, t, tokens, given, self_cond if use_self_cond else None, drop, None, bias)

        report = None if on_step is None else lambda i, guess: on_step(i, torch.where(given, tokens, guess))
        return reverse_diffusion(denoise, sampler, shape, table, cfg, streams, self.warp, report)

    @property
    def flops_per_token(self) -> float:
        """Approximate training FLOPs per token: 6 x parameters (Kaplan et al. 2020), plus 2 x parameters for
        the extra no-grad forward that self-conditioning runs on a fraction of the batches."""
        extra = self.diffusion_config.self_cond_prob if self.net.self_conditioning else 0.0
        return (6 + 2 * extra) * self.num_parameters()
