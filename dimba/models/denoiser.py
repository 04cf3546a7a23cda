"""The DIMBA denoiser: (x_t, t, prompt, self-conditioning) -> token logits and x0_hat.

Embeddings E (vocab x d_embed), optionally normalised to norm sqrt(d_embed) per row so that every
coordinate has unit scale against unit noise and the schedule's SNR means what it says. The output
projection is tied to E: logits = h W_out E^T (or, with `head: untied`, a linear map from the backbone's
width with a per-token bias: a higher-rank head that can express the token marginal; with `wide_input` its rows
are also a d_model-wide input embedding of the clean tokens). x0_hat is either the
regression output h W_out ("direct", the paper) or the expected embedding under the predicted token
distribution, softmax(logits) E ("softmax", CDCD / Plaid score interpolation).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dimba.models.blocks import MambaBlock, RMSNorm
from dimba.models.conditioning import PromptEncoder, TimestepEmbedding
from dimba.models.config import DenoiserConfig, MambaConfig
from dimba.precision import linear_fp32, upcast


class DimbaDenoiser(nn.Module):
    """(x_t, t, prompt, self-conditioning) -> (logits, x0_hat), built from the backbone's `MambaConfig` and the
    `DenoiserConfig`."""

    def __init__(self, net: MambaConfig, config: DenoiserConfig, vocab_size: int):
        super().__init__()
        self.d_embed, self.embed_norm, self.x0_param = config.d_embed, config.embed_norm, config.x0_param
        self.self_conditioning = config.self_conditioning
        d_model, d_embed = net.d_model, config.d_embed
        self.embedding = nn.Embedding(vocab_size, d_embed)
        nn.init.normal_(self.embedding.weight)  # unit variance per coordinate, like the noise
        # Stands in for prompt tokens when the prompt is dropped (classifier-free guidance).
        self.null_token = nn.Parameter(torch.zeros(d_embed))
        self.in_proj = nn.Linear(d_embed * (2 if config.self_conditioning else 1), d_model)
        self.position_kind = nn.Embedding(2, d_model)  # 0: noised position, 1: clean prompt position
        self.time_embed = TimestepEmbedding(d_model)
        self.prompt_encoder = PromptEncoder(d_embed, d_model, frozen=config.prompt_encoder == "frozen")
        self.blocks = nn.ModuleList(
            MambaBlock(d_model, d_cond=d_model, conditioning=config.conditioning, bidirectional=True,
                       mlp_ratio=net.mlp_ratio, layer_idx=i, **net.mixer_kwargs())
            for i in range(net.n_layers))
        self.norm_f = RMSNorm(d_model)
        needs_out_proj = config.head == "tied" or config.x0_param == "direct"
        self.out_proj = nn.Linear(d_model, d_embed) if needs_out_proj else None
        self.head = nn.Linear(d_model, vocab_size) if config.head == "untied" else None
        self.wide_input = config.wide_input
        if self.head is not None:
            # Zero-init: uniform logits at the start, like the tied head's near-uniform ones; the bias then
            # learns the token prior and the weights the context's contribution. As a shared input table the
            # rows must differ from the start (small, as the masked model's embedding): near-uniform logits still.
            if self.wide_input:
                nn.init.normal_(self.head.weight, std=0.02)
            else:
                nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def embedding_table(self) -> Tensor:
        """E as used everywhere (inputs, targets, tied output): (vocab, d_embed), fp32."""
        table = upcast(self.embedding.weight)
        if self.embed_norm:
            table = F.normalize(table, dim=-1) * math.sqrt(self.d_embed)
        return table

    def embed(self, tokens: Tensor) -> Tensor:
        """(B, L) token ids -> (B, L, d_embed) clean embeddings x0."""
        return F.embedding(tokens, self.embedding_table())

    def forward(self, x_t: Tensor, t: Tensor, prompt_tokens: Tensor, prompt_mask: Tensor,
                self_cond: Tensor | None = None, drop_prompt: Tensor | None = None, clean_mask: Tensor | None = None,
                logit_bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """
        Args:
            x_t: (B, L, d_embed) noised embeddings (values at clean positions are ignored).
            t: (B,) diffusion time in [0, 1].
            prompt_tokens: (B, L) token ids, read at clean positions only.
            prompt_mask: (B, L) bool, True where the token is a given prompt token (it feeds the prompt encoder).
            self_cond: (B, L, d_embed) previous x0 estimate, or None (zeros).
            drop_prompt: (B,) bool, True to hide the prompt (classifier-free guidance's unconditional branch).
            clean_mask: (B, L) bool, positions given exactly (the prompt, and tokens a committing sampler has
                revealed); default: prompt_mask.
            logit_bias: (B, L, vocab) added to the logits before x0_hat is formed (e.g. the likelihood of x_t
                under each token, computed by the diffusion code).
        Returns:
            logits: (B, L, vocab) fp32 scores of the output projection.
            x0_hat: (B, L, d_embed) fp32 estimate of the clean embeddings.
        """
        clean_mask = prompt_mask if clean_mask is None else clean_mask
        table = self.embedding_table()
        clean = F.embedding(prompt_tokens, table)  # (B, L, De)
        if drop_prompt is not None:
            hidden = drop_prompt[:, None, None] & prompt_mask[..., None]
            clean = torch.where(hidden, self.null_token.to(clean.dtype).expand_as(clean), clean)
        cond_mask = prompt_mask if drop_prompt is None else prompt_mask & ~drop_prompt[:, None]
        x_in = torch.where(clean_mask[..., None], clean, x_t.to(clean.dtype))
        if self.self_conditioning:
            sc = torch.zeros_like(x_in) if self_cond is None else self_cond.to(x_in.dtype)
            x_in = torch.cat([x_in, sc.masked_fill(clean_mask[..., None], 0.0)], dim=-1)
        h = self.in_proj(x_in.to(self.in_proj.weight.dtype)) + self.position_kind(clean_mask.long())  # (B, L, D)
        if self.wide_input:
            shown = clean_mask if drop_prompt is None else clean_mask & ~(drop_prompt[:, None] & prompt_mask)
            h = h + F.embedding(prompt_tokens, self.head.weight).to(h.dtype) * shown[..., None]
        c = self.time_embed(t) + self.prompt_encoder(clean, cond_mask)  # (B, D)
        for block in self.blocks:
            h = block(h, c)
        h = self.norm_f(h)
        out = None if self.out_proj is None else linear_fp32(h, self.out_proj)  # (B, L, De)
        with torch.autocast(h.device.type, enabled=False):  # fp32 logits and x0_hat (see linear_fp32)
            logits = out @ table.t() if self.head is None else linear_fp32(h, self.head)  # (B, L, V)
            if logit_bias is not None:
                logits = logits + logit_bias
            x0_hat = torch.softmax(logits, dim=-1) @ table if self.x0_param == "softmax" else out
        return logits, x0_hat
