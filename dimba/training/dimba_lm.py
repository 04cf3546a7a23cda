"""DimbaLM: Gaussian diffusion over token embeddings (the paper's corruption: every generated token noised at
the same level) with the bidirectional Mamba-2 denoiser, a learned time warp (CDCD) and the DDIM / DDPM sampler.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dimba.diffusion.config import DiffusionConfig, PromptConfig, TimeWarpConfig
from dimba.diffusion.generate import reverse_diffusion
from dimba.diffusion.losses import DiffusionLoss
from dimba.diffusion.samplers import DDIMSampler
from dimba.diffusion.time_warp import TimeWarp
from dimba.models.config import DenoiserConfig, MambaConfig
from dimba.sampling import ExampleStreams, SamplingConfig
from dimba.training.base import OnStep
from dimba.training.embedding_diffusion import EmbeddingDiffusionLM
from dimba.training.optim import OptimConfig

T_MIN = 1e-3  # t = 0 exactly is a noiseless, uninformative training example


class DimbaLM(EmbeddingDiffusionLM):
    """Gaussian diffusion LM over token embeddings.

    Args:
        net: the Mamba-2 backbone (`MambaConfig`). denoiser: what the denoiser adds (`DenoiserConfig`).
        diffusion: schedule and loss weights (`DiffusionConfig`). time_warp: the learned time warp
            (`TimeWarpConfig`). prompt: which tokens of a training example are its clean prompt (`PromptConfig`).
        optim: optimiser and LR schedule (`OptimConfig`).
        vocab_size, seq_len: from the data module (linked by the CLI).
    """

    kind, short_name, display_name = "dimba", "DIMBA", "DIMBA (Gaussian diffusion)"
    sampling_options = frozenset({"steps", "sampler", "eta", "guidance", "self_condition", "clamp_from", "temperature",
                                  "top_p", "x0_temperature", "warped_steps", "stop_at_eos"})

    def __init__(self, net: MambaConfig = MambaConfig(), denoiser: DenoiserConfig = DenoiserConfig(),
                 diffusion: DiffusionConfig = DiffusionConfig(), time_warp: TimeWarpConfig = TimeWarpConfig(),
                 prompt: PromptConfig = PromptConfig(), optim: OptimConfig = OptimConfig(), vocab_size: int = 4096,
                 seq_len: int = 128):
        warp_config = TimeWarpConfig.from_dict(time_warp)
        super().__init__(net, denoiser, diffusion, prompt, optim, vocab_size, seq_len, time_warp=warp_config)
        self.time_warp_config = warp_config
        self.warp = TimeWarp(window=warp_config.window) if warp_config.enabled else None

    # ------------------------------------------------------------------ training
    def sample_times(self, n: int) -> Tensor:
        """Uniform, or through the learned warp once it is ready (where the token CE changes)."""
        u = torch.rand(n, device=self.device)
        t = self.warp.warp(u) if self.warp is not None else u
        return t.clamp(T_MIN, 1.0)

    def corrupt(self, generated: Tensor, t: Tensor, uniforms: Tensor | None) -> Tensor:
        return generated  # every generated position is noised

    def objective(self, logits: Tensor, parts: DiffusionLoss, tokens: Tensor, corrupted: Tensor, generated: Tensor,
                  t: Tensor) -> Tensor:
        return parts.total  # mse_weight * MSE + ce_weight * CE over the noised positions

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
    def sample_span(self, tokens: Tensor, given: Tensor, cfg: SamplingConfig, streams: ExampleStreams,
                    on_step: OnStep | None, cache: dict | None) -> Tensor:
        """Reverse diffusion over (b, L) with the given positions clean (and feeding the prompt encoder)."""
        sampler = DDIMSampler.named(cfg.sampler, self.schedule, cfg.eta)
        report = None if on_step is None else lambda i, guess: on_step(i, torch.where(given, tokens, guess))
        return reverse_diffusion(self.denoiser(given, cfg, cache), sampler, self.guidance(cfg), cfg, streams, tokens,
                                 given, self.warp, report)
