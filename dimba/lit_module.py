"""DimbaLM: composes the noise schedule, the denoiser, the losses and the sampler for Lightning."""

from __future__ import annotations

import torch
from torch import Tensor

from dimba.diffusion.generate import SamplingConfig, reverse_diffusion
from dimba.diffusion.losses import diffusion_loss
from dimba.diffusion.samplers import DDIMSampler
from dimba.diffusion.schedules import NoiseSchedule
from dimba.diffusion.time_warp import TimeWarp
from dimba.lit_base import LanguageModelBase
from dimba.models.denoiser import DimbaDenoiser
from dimba.sampling import sampling_generator

VAL_TIMES = (0.1, 0.3, 0.5, 0.7, 0.9)
T_MIN = 1e-3  # t = 0 exactly is a noiseless, uninformative training example


def random_prefix_mask(batch: int, length: int, prompt_prob: float, max_prompt_frac: float,
                       device: torch.device | str = "cpu") -> Tensor:
    """(B, L) bool: a clean prompt prefix of random length (1..max_prompt_frac * L) with probability
    prompt_prob, else no prompt (unconditional generation is learned too)."""
    max_len = max(1, int(max_prompt_frac * length))
    lengths = torch.randint(1, max_len + 1, (batch,), device=device)
    lengths = torch.where(torch.rand(batch, device=device) < prompt_prob, lengths, torch.zeros_like(lengths))
    return torch.arange(length, device=device)[None] < lengths[:, None]


class DimbaLM(LanguageModelBase):
    """Diffusion LM over token embeddings with a bidirectional Mamba-2 denoiser.

    Args (network): see `DimbaDenoiser`. vocab_size and seq_len are linked from the data module.
    Args (diffusion):
        schedule: "cosine" (the paper), "sqrt" or "linear"; log_snr_shift: constant added to log-SNR
            (-2 ln k = k times more noise); time_warp: learn the distribution of training t (CDCD).
        mse_weight, ce_weight: weights of ||x0_hat - x0||^2 and the rounding cross-entropy.
        prompt_prob, max_prompt_frac: how often and how long a clean prefix is kept as the prompt.
        cfg_dropout: fraction of examples whose prompt is hidden (for classifier-free guidance).
        self_cond_prob: fraction of batches trained with self-conditioning (if the network has it).
    Args (optimiser): lr, weight_decay, betas, warmup_steps, lr_decay_steps (None: the trainer's
        max_steps), min_lr_ratio.
    """

    def __init__(
        self,
        vocab_size: int = 4096,
        seq_len: int = 128,
        d_embed: int = 64,
        d_model: int = 256,
        n_layers: int = 4,
        d_state: int = 64,
        headdim: int = 64,
        expand: int = 2,
        chunk_size: int = 64,
        mlp_ratio: float = 0.0,
        conditioning: str = "film",
        combine: str = "sum",
        prompt_encoder: str = "mlp",
        embed_norm: bool = True,
        x0_param: str = "softmax",
        self_conditioning: bool = True,
        impl: str = "auto",
        schedule: str = "cosine",
        log_snr_shift: float = 0.0,
        time_warp: bool = True,
        mse_weight: float = 1.0,
        ce_weight: float = 1.0,
        prompt_prob: float = 0.5,
        max_prompt_frac: float = 0.5,
        cfg_dropout: float = 0.1,
        self_cond_prob: float = 0.5,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.98),
        warmup_steps: int = 200,
        lr_decay_steps: int | None = None,
        min_lr_ratio: float = 0.1,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.net = DimbaDenoiser(vocab_size, d_embed=d_embed, d_model=d_model, n_layers=n_layers,
                                 d_state=d_state, headdim=headdim, expand=expand, chunk_size=chunk_size,
                                 mlp_ratio=mlp_ratio, conditioning=conditioning, combine=combine,
                                 prompt_encoder=prompt_encoder, embed_norm=embed_norm, x0_param=x0_param,
                                 self_conditioning=self_conditioning, impl=impl)
        self.schedule = NoiseSchedule(schedule, log_snr_shift=log_snr_shift)
        self.warp = TimeWarp() if time_warp else None

    # ------------------------------------------------------------------ training
    def sample_times(self, batch: int) -> Tensor:
        u = torch.rand(batch, device=self.device)
        t = self.warp.warp(u) if self.warp is not None else u
        return t.clamp(T_MIN, 1.0)

    def diffusion_step(self, tokens: Tensor, t: Tensor, prompt_mask: Tensor, drop_prompt: Tensor | None,
                       self_cond_prob: float, noise: Tensor | None = None):
        x0 = self.net.embed(tokens)
        noise = torch.randn_like(x0) if noise is None else noise
        x_t = self.schedule.q_sample(x0, t, noise)
        self_cond = None
        # Draw only when it can matter: validation (prob 0) must not consume the training's random stream.
        if self.net.self_conditioning and self_cond_prob > 0 and torch.rand(()) < self_cond_prob:
            with torch.no_grad():  # a first estimate, fed back without gradient (Chen et al. 2022)
                self_cond = self.net(x_t, t, tokens, prompt_mask, None, drop_prompt)[1].detach()
        logits, x0_hat = self.net(x_t, t, tokens, prompt_mask, self_cond, drop_prompt)
        return diffusion_loss(logits, x0_hat, x0, tokens, ~prompt_mask, self.hparams.mse_weight,
                              self.hparams.ce_weight)

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        tokens = batch
        B, L_ = tokens.shape
        hp = self.hparams
        t = self.sample_times(B)
        prompt_mask = random_prefix_mask(B, L_, hp.prompt_prob, hp.max_prompt_frac, self.device)
        drop = torch.rand(B, device=self.device) < hp.cfg_dropout
        loss = self.diffusion_step(tokens, t, prompt_mask, drop, hp.self_cond_prob)
        if self.warp is not None:
            t_seen, ce_seen = t.detach(), loss.per_example_ce.detach()
            if self._trainer is not None and self.trainer.world_size > 1:
                # Every rank folds in every rank's losses, so the warps stay identical under DDP.
                t_seen, ce_seen = self.all_gather(t_seen), self.all_gather(ce_seen)
            self.warp.update(t_seen.flatten(), ce_seen.flatten())
        self.log_dict({"train/loss": loss.total, "train/mse": loss.mse, "train/ce": loss.ce,
                       "train/acc": loss.accuracy}, prog_bar=False, batch_size=B)
        self.log("loss", loss.total, prog_bar=True, logger=False, batch_size=B)
        return loss.total

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        self.evaluate_at_fixed_times(batch, batch_idx, "val")

    def test_step(self, batch: Tensor, batch_idx: int) -> None:
        self.evaluate_at_fixed_times(batch, batch_idx, "test")

    def evaluate_at_fixed_times(self, batch: Tensor, batch_idx: int, stage: str) -> None:
        """Loss and token accuracy at fixed t, unconditional, with noise fixed per batch (comparable
        across validations)."""
        tokens = batch
        B = tokens.shape[0]
        no_prompt = torch.zeros_like(tokens, dtype=torch.bool)
        gen = sampling_generator(batch_idx, self.device, stream="validation")
        noise = torch.randn(*tokens.shape, self.hparams.d_embed, generator=gen, device=self.device)
        totals = []
        for tv in VAL_TIMES:
            t = torch.full((B,), tv, device=self.device)
            loss = self.diffusion_step(tokens, t, no_prompt, None, self_cond_prob=0.0, noise=noise)
            totals.append(loss.total)
            self.log_dict({f"{stage}_t/ce@{tv}": loss.ce, f"{stage}_t/acc@{tv}": loss.accuracy}, batch_size=B)
        self.log(f"{stage}/loss", torch.stack(totals).mean(), prog_bar=True, batch_size=B, sync_dist=True)

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

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], gen_len: int, cfg: SamplingConfig,
                 record_trajectory: bool = False) -> tuple[list[list[int]], list[Tensor]]:
        """Complete each prompt (a list of token ids, possibly empty) with gen_len new tokens.

        Prompts of different lengths share one batch: each sequence is max_prompt + gen_len long, and
        example i keeps the gen_len tokens right after its own prompt. Returns the new token ids per
        prompt and, if asked, the argmax tokens (B, L) after each step.
        """
        if gen_len < 1:
            raise ValueError(f"the generation length must be >= 1, got {gen_len}")
        if cfg.x0_temperature != 1.0 and self.net.x0_param != "softmax":
            raise ValueError("x0_temperature needs a model with x0_param 'softmax' (this one regresses x0 directly)")
        batch = len(prompts)
        max_prompt = max((len(p) for p in prompts), default=0)
        length = max_prompt + gen_len
        tokens = torch.zeros(batch, length, dtype=torch.long, device=self.device)
        mask = torch.zeros(batch, length, dtype=torch.bool, device=self.device)
        for i, p in enumerate(prompts):
            tokens[i, :len(p)] = torch.tensor(p, dtype=torch.long)
            mask[i, :len(p)] = True
        sampler = DDIMSampler.named(cfg.sampler, self.schedule, cfg.eta)
        cfg_sc = cfg.self_condition and self.net.self_conditioning

        net = self.generation_fn()

        def denoise(x_t, t, self_cond, drop):
            return net(x_t, t, tokens, mask, self_cond if cfg_sc else None, drop)

        out, trajectory = reverse_diffusion(denoise, sampler, (batch, length, self.hparams.d_embed),
                                            self.net.embedding_table(), cfg, self.warp, self.device,
                                            record_trajectory)
        completions = [out[i, len(p):len(p) + gen_len].tolist() for i, p in enumerate(prompts)]
        return completions, trajectory

    @property
    def flops_per_token(self) -> float:
        """Approximate training FLOPs per token: 6 x parameters (Kaplan et al. 2020), plus 2 x parameters for
        the extra no-grad forward that self-conditioning runs on a fraction of the batches."""
        extra = self.hparams.self_cond_prob if self.net.self_conditioning else 0.0
        return (6 + 2 * extra) * self.num_parameters()
