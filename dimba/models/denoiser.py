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

from dimba.models.blocks import BlockState, MambaBlock, RMSNorm
from dimba.models.conditioning import PromptEncoder, TimestepEmbedding
from dimba.models.config import DenoiserConfig, MambaConfig
from dimba.precision import linear_fp32, upcast


class DimbaDenoiser(nn.Module):
    """(x_t, t, prompt, self-conditioning) -> (logits, x0_hat), built from the backbone's `MambaConfig` and the
    `DenoiserConfig`."""

    def __init__(self, net: MambaConfig, config: DenoiserConfig, vocab_size: int, absorbing: bool = False):
        super().__init__()
        self.d_embed, self.embed_norm, self.x0_param = config.d_embed, config.embed_norm, config.x0_param
        self.block_size = net.block_size
        self.self_conditioning = config.self_conditioning
        d_model, d_embed = net.d_model, config.d_embed
        self.embedding = nn.Embedding(vocab_size, d_embed)
        nn.init.normal_(self.embedding.weight)  # unit variance per coordinate, like the noise
        self._table_cache: tuple | None = None  # (weights' version, E) while sampling
        # Stands in for prompt tokens when the prompt is dropped (classifier-free guidance).
        self.null_token = nn.Parameter(torch.zeros(d_embed))
        self.in_proj = nn.Linear(d_embed * (2 if config.self_conditioning else 1), d_model)
        self.position_kind = nn.Embedding(2, d_model)  # 0: noised position, 1: clean prompt position
        # absorbing: a corrupted token may also be absorbed (no latent at all, masked diffusion's regime); it reads
        # this vector instead of its latent.
        self.absorbed_embedding = nn.Parameter(torch.zeros(d_model)) if absorbing else None
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
        """E as used everywhere (inputs, targets, tied output): (vocab, d_embed), fp32. Without gradients (sampling
        calls it several times per step) it is computed once per version of the weights."""
        weight = self.embedding.weight
        cache = not torch.is_grad_enabled() and not torch.compiler.is_compiling()  # a traced graph computes it
        key = (weight._version, weight.data_ptr(), weight.device, weight.dtype) if cache else None
        if cache and self._table_cache is not None and self._table_cache[0] == key:
            return self._table_cache[1]
        table = upcast(weight)
        if self.embed_norm:
            table = F.normalize(table, dim=-1) * math.sqrt(self.d_embed)
        if cache:
            self._table_cache = (key, table)
        return table

    def embed(self, tokens: Tensor) -> Tensor:
        """(B, L) token ids -> (B, L, d_embed) clean embeddings x0."""
        return F.embedding(tokens, self.embedding_table())

    def _clean(self, tokens: Tensor, prompt_mask: Tensor, drop_prompt: Tensor | None, table: Tensor
               ) -> tuple[Tensor, Tensor]:
        """(clean embeddings (B, L, d_embed) with a dropped prompt's tokens replaced by the null token, the mask of
        the prompt positions that condition (B, L))."""
        clean = F.embedding(tokens, table)  # (B, L, De)
        if drop_prompt is None:
            return clean, prompt_mask
        hidden = drop_prompt[:, None, None] & prompt_mask[..., None]
        clean = torch.where(hidden, self.null_token.to(clean.dtype).expand_as(clean), clean)
        return clean, prompt_mask & ~drop_prompt[:, None]

    def _inputs(self, x_t: Tensor | None, tokens: Tensor, prompt_mask: Tensor, self_cond: Tensor | None,
                drop_prompt: Tensor | None, clean_mask: Tensor, clean: Tensor, absorbed: Tensor | None = None
                ) -> Tensor:
        """The residual stream's input (B, L, d_model): clean embeddings at clean_mask, x_t elsewhere, the
        self-conditioning channel, the position kind and the wide input; at `absorbed` positions (B, L) no latent
        and no self-conditioning, the absorbed vector instead."""
        x_in = clean if x_t is None else torch.where(clean_mask[..., None], clean, x_t.to(clean.dtype))
        if self.self_conditioning:
            sc = torch.zeros_like(x_in) if self_cond is None else self_cond.to(x_in.dtype)
            x_in = torch.cat([x_in, sc.masked_fill(clean_mask[..., None], 0.0)], dim=-1)
        if absorbed is not None:
            x_in = x_in.masked_fill(absorbed[..., None], 0.0)
        h = self.in_proj(x_in.to(self.in_proj.weight.dtype)) + self.position_kind(clean_mask.long())  # (B, L, D)
        if absorbed is not None:
            h = h + self.absorbed_embedding.to(h.dtype) * absorbed[..., None]
        if self.wide_input:
            shown = clean_mask if drop_prompt is None else clean_mask & ~(drop_prompt[:, None] & prompt_mask)
            h = h + F.embedding(tokens, self.head.weight).to(h.dtype) * shown[..., None]
        return h

    def _head(self, h: Tensor, table: Tensor, logit_bias: Tensor | None) -> tuple[Tensor, Tensor]:
        """The final norm and the output head: (logits (.., V), x0_hat (.., d_embed)), both fp32."""
        h = self.norm_f(h)
        out = None if self.out_proj is None else linear_fp32(h, self.out_proj)  # (B, L, De)
        with torch.autocast(h.device.type, enabled=False):  # fp32 logits and x0_hat (see linear_fp32)
            logits = out @ table.t() if self.head is None else linear_fp32(h, self.head)  # (B, L, V)
            if logit_bias is not None:
                logits = logits + logit_bias
            x0_hat = torch.softmax(logits, dim=-1) @ table if self.x0_param == "softmax" else out
        return logits, x0_hat

    def forward(self, x_t: Tensor, t: Tensor, prompt_tokens: Tensor, prompt_mask: Tensor,
                self_cond: Tensor | None = None, drop_prompt: Tensor | None = None, clean_mask: Tensor | None = None,
                logit_bias: Tensor | None = None, absorbed: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """
        Args:
            x_t: (B, L, d_embed) noised embeddings (values at clean positions are ignored).
            t: (B,) diffusion time in [0, 1]; or (B, n_blocks) with n_blocks > 1, one time per block: block
                diffusion's training pass (`block_size` of the backbone; see `two_stream`).
            prompt_tokens: (B, L) token ids, read at clean positions only (in block diffusion, everywhere by the
                clean stream).
            prompt_mask: (B, L) bool, True where the token is a given prompt token (it feeds the prompt encoder).
            self_cond: (B, L, d_embed) previous x0 estimate, or None (zeros).
            drop_prompt: (B,) bool, True to hide the prompt (classifier-free guidance's unconditional branch).
            clean_mask: (B, L) bool, positions given exactly (the prompt, and tokens a committing sampler has
                revealed); default: prompt_mask.
            logit_bias: (B, L, vocab) added to the logits before x0_hat is formed (e.g. the likelihood of x_t
                under each token, computed by the diffusion code).
            absorbed: (B, L) bool, corrupted positions without a latent (a network built with `absorbing`).
        Returns:
            logits: (B, L, vocab) fp32 scores of the output projection.
            x0_hat: (B, L, d_embed) fp32 estimate of the clean embeddings.
        """
        clean_mask = prompt_mask if clean_mask is None else clean_mask
        table = self.embedding_table()
        clean, cond_mask = self._clean(prompt_tokens, prompt_mask, drop_prompt, table)
        h = self._inputs(x_t, prompt_tokens, prompt_mask, self_cond, drop_prompt, clean_mask, clean, absorbed)
        prompt_c = self.prompt_encoder(clean, cond_mask)  # (B, D)
        if t.dim() == 2 and t.shape[1] > 1:
            h = self.two_stream(h, t, prompt_tokens, prompt_mask, drop_prompt, clean, prompt_c)
        else:
            c = self.time_embed(t.reshape(-1)) + prompt_c  # (B, D)
            for block in self.blocks:
                h = block(h, c)
        return self._head(h, table, logit_bias)

    def two_stream(self, noisy: Tensor, t: Tensor, tokens: Tensor, prompt_mask: Tensor, drop_prompt: Tensor | None,
                   clean: Tensor, prompt_c: Tensor) -> Tensor:
        """Block diffusion's training pass over the residual stream of the noisy inputs (B, L, D): every block
        (its own time t (B, n_blocks)) sees the clean stream before it through the left-to-right state, itself,
        and nothing after it. The clean stream reads every token clean, at t = 0. Returns the noisy stream
        after the blocks, (B, L, D)."""
        B, L, D = noisy.shape
        n_blocks = t.shape[1]
        if self.block_size * n_blocks != L:
            raise ValueError(f"{n_blocks} block times for {L} positions in blocks of {self.block_size}")
        everywhere = torch.ones_like(prompt_mask)
        h_clean = self._inputs(None, tokens, prompt_mask, None, drop_prompt, everywhere, clean)
        c_clean = self.time_embed(torch.zeros(B, device=t.device, dtype=t.dtype)) + prompt_c
        c_noisy = self.time_embed(t.reshape(-1)) + prompt_c.repeat_interleave(n_blocks, dim=0)  # (B * nb, D)
        h_noisy = noisy.reshape(B * n_blocks, self.block_size, D)
        for block in self.blocks:
            h_clean, h_noisy = block.two_stream(h_clean, c_clean, h_noisy, c_noisy, self.block_size)
        return h_noisy.reshape(B, L, D)

    # ------------------------------------------------------------------ block diffusion: generation
    def start_blocks(self, tokens: Tensor, prompt_mask: Tensor, drop_prompt: Tensor | None = None) -> BlockState:
        """The state before the first block: the prompt's encoding from every given position of tokens (B, L)."""
        clean, cond_mask = self._clean(tokens, prompt_mask, drop_prompt, self.embedding_table())
        return BlockState([None] * len(self.blocks), self.prompt_encoder(clean, cond_mask), drop_prompt)

    def advance(self, state: BlockState, tokens: Tensor, prompt_mask: Tensor) -> BlockState:
        """The state after the clean (committed) tokens (B, n) that follow it; prompt_mask (B, n) marks the given
        prompt among them."""
        clean, _ = self._clean(tokens, prompt_mask, state.drop_prompt, self.embedding_table())
        h = self._inputs(None, tokens, prompt_mask, None, state.drop_prompt, torch.ones_like(prompt_mask), clean)
        t0 = torch.zeros(tokens.shape[0], device=tokens.device)
        c = self.time_embed(t0) + state.prompt_c
        layers = []
        for block, layer in zip(self.blocks, state.layers, strict=True):
            h, after = block.block_from(h, c, layer, return_state=True)
            layers.append(after)
        return BlockState(layers, state.prompt_c, state.drop_prompt)

    def denoise_block(self, state: BlockState, x_t: Tensor, t: Tensor, tokens: Tensor, prompt_mask: Tensor,
                      self_cond: Tensor | None = None, clean_mask: Tensor | None = None,
                      logit_bias: Tensor | None = None, absorbed: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """`forward` on one block (B, n) after what `state` summarises: cost O(n), whatever came before."""
        clean_mask = prompt_mask if clean_mask is None else clean_mask
        table = self.embedding_table()
        clean, _ = self._clean(tokens, prompt_mask, state.drop_prompt, table)
        h = self._inputs(x_t, tokens, prompt_mask, self_cond, state.drop_prompt, clean_mask, clean, absorbed)
        c = self.time_embed(t) + state.prompt_c
        for block, layer in zip(self.blocks, state.layers, strict=True):
            h, _ = block.block_from(h, c, layer)
        return self._head(h, table, logit_bias)
