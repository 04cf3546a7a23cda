"""Block diffusion for every diffusion kind (BD3-LM, Arriola et al. 2025, on the Mamba-2 state): with the backbone's
`net.block_size` = k > 0 the sequence is cut into blocks of k tokens, autoregressive across blocks, diffusion inside
one. Training draws one time per block and runs the network's two streams (`DimbaDenoiser.two_stream`): each
block's corrupted version sees the clean blocks before it through the left-to-right SSM state. Generation goes
block by block: the given complete blocks are prefilled once, each block is denoised by the kind's own sampler
over its k positions only (a step costs O(k), whatever came before), and the committed block advances the state.
The state is the cache: O(1) memory per sequence, so generation runs past the training context.

A kind provides `sample_span(tokens, given, cfg, streams, on_step, cache)` (its sampler over some positions,
through the whole-sequence network when cache is None), `block_cache` and `advance_cache`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from dimba.errors import ConfigError
from dimba.sampling import ExampleStreams, SamplingConfig
from dimba.training.base import MAX_RECURRENT_LENGTH

# on_commit(tokens): the group's tokens (b, L) after a block is committed, -1 where not decided yet.
OnCommit = Callable[[Tensor], None]


class BlockDiffusion:
    """Mixin of the diffusion kinds (listed before their LanguageModelBase): block structure from `net.block_size`,
    per-block training times, and block-by-block generation."""

    net_config = None  # the backbone's MambaConfig, set by the kind

    @property
    def block_size(self) -> int:
        return self.net_config.block_size

    def check_block_size(self) -> None:
        if self.block_size and self.seq_len % self.block_size:
            raise ConfigError(f"seq_len ({self.seq_len}) must be a multiple of net.block_size ({self.block_size})")

    def blocks_in(self, length: int) -> int:
        """How many blocks a sequence of `length` tokens has (1 for a model without blocks)."""
        return math.ceil(length / self.block_size) if self.block_size and length > self.block_size else 1

    def block_times(self, t: Tensor, length: int) -> Tensor:
        """One time per example (B,) as one per block (B, n_blocks); unchanged when there is one block."""
        n = self.blocks_in(length)
        return t if n == 1 or t.dim() == 2 else t[:, None].expand(-1, n)

    @staticmethod
    def as_rows(x: Tensor, n_blocks: int) -> Tensor:
        """(B, L, ...) as (B * n_blocks, L / n_blocks, ...): each block a row of its own (the corruption and the
        loss treat a block as an example)."""
        return x.reshape(x.shape[0] * n_blocks, x.shape[1] // n_blocks, *x.shape[2:])

    @property
    def max_length(self) -> int:
        """A block model's state carries: it generates past its training context."""
        return MAX_RECURRENT_LENGTH if self.block_size else self.seq_len

    # ------------------------------------------------------------------ generation
    _compiled_blocks: dict | None = None

    def block_fn(self, name: str) -> Callable:
        """The network's `denoise_block` or `advance`, compiled once `compile_generation` has run."""
        return (self._compiled_blocks or {}).get(name) or getattr(self.net, name)

    def compile_generation(self, mode: str = "default") -> None:
        """Also compile what block generation repeats: one graph per block shape."""
        super().compile_generation(mode)
        if self.block_size:
            self._compiled_blocks = {name: torch.compile(getattr(self.net, name), dynamic=False, mode=mode)
                                     for name in ("denoise_block", "advance")}

    def sample_span(self, tokens: Tensor, given: Tensor, cfg: SamplingConfig, streams: ExampleStreams,
                    on_step, cache) -> Tensor:
        raise NotImplementedError

    def block_cache(self, tokens: Tensor, given: Tensor, cfg: SamplingConfig):
        """The state before the first block (from the whole request: a prompt encoder reads every given token)."""
        raise NotImplementedError

    def advance_cache(self, cache, tokens: Tensor, given: Tensor):
        """The cache after the committed tokens (b, n) that follow it."""
        raise NotImplementedError

    def fill_group(self, tokens: Tensor, given: Tensor, cfg: SamplingConfig, streams: ExampleStreams, on_step,
                   on_commit: OnCommit | None = None) -> Tensor:
        if self.blocks_in(tokens.shape[1]) == 1:
            return self.sample_span(tokens, given, cfg, streams, on_step, None)
        return self.fill_blockwise(tokens, given, cfg, streams, on_step, on_commit)

    @torch.no_grad()
    def fill_blockwise(self, tokens: Tensor, given: Tensor, cfg: SamplingConfig, streams: ExampleStreams, on_step,
                       on_commit: OnCommit | None) -> Tensor:
        """Block by block, left to right, each with cfg.steps steps of the kind's sampler. Stops after the first
        block in which every row has written the end-of-sequence token, when nothing given follows (the rest is
        that token), unless cfg.stop_at_eos is false."""
        B, L = tokens.shape
        k = self.block_size
        tokens = tokens.clone()
        cache = self.block_cache(tokens, given, cfg)
        open_rows = (~given).any(0).nonzero()
        first = int(open_rows[0]) // k * k if len(open_rows) else L  # the complete blocks given in every row
        if first:
            cache = self.advance_cache(cache, tokens[:, :first], given[:, :first])
        guess = torch.where(given, tokens, torch.full_like(tokens, -1))
        steps_done = 0
        # Without a tokenizer no id means "the end".
        eos = self.eos_id if self.tokenizer is not None and cfg.stop_at_eos else None
        for lo in range(first, L, k):
            hi = min(lo + k, L)

            def report(i, span, lo=lo, hi=hi, offset=steps_done):
                if on_step is not None:
                    on_step(offset + i, torch.cat([guess[:, :lo], span, guess[:, hi:]], dim=1))

            span = self.sample_span(tokens[:, lo:hi], given[:, lo:hi], cfg, streams, report, cache)
            tokens[:, lo:hi] = torch.where(given[:, lo:hi], tokens[:, lo:hi], span)
            guess[:, lo:hi] = tokens[:, lo:hi]
            steps_done += cfg.steps
            if on_commit is not None:
                on_commit(guess)
            finished = eos is not None and bool(((tokens[:, :hi] == eos) & ~given[:, :hi]).any(1).all())
            if hi < L and finished and not bool(given[:, hi:].any()):
                tokens[:, hi:] = eos
                break
            if hi < L:
                cache = self.advance_cache(cache, tokens[:, lo:hi], given[:, lo:hi])
        return tokens
