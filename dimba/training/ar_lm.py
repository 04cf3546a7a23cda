"""ARLM: the autoregressive baseline as a LightningModule (next-token loss, perplexity, recurrent sampling).

Trained by the same CLI and data module: `dimba fit --config configs/base.yaml --model configs/model/ar.yaml`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MeanMetric
from torchmetrics.text import Perplexity

from dimba.errors import ConfigError
from dimba.models.ar import ARLanguageModel
from dimba.models.config import MambaConfig
from dimba.sampling import ExampleStreams, SamplingConfig, sample_tokens
from dimba.training.base import MAX_RECURRENT_LENGTH, LanguageModelBase, LossOutput, OnStep, unpack
from dimba.training.optim import OptimConfig


class ARLM(LanguageModelBase):
    """Causal Mamba-2 LM. Every sequence is scored after an end-of-sequence token, which also starts
    generation, so an empty prompt is a document start.

    Args:
        net: the Mamba-2 backbone (`MambaConfig`), causal here.
        optim: optimiser and LR schedule (`OptimConfig`).
        fim_rate: share of training blocks rearranged for fill-in-the-middle (Bavarian et al. 2022, PSM:
            <PRE> prefix <SUF> suffix <MID> middle, three sentinel tokens after the vocabulary); 0: a plain
            left-to-right model. A FIM model fills a gap knowing the text after it.
        vocab_size, seq_len: from the data module (linked by the CLI).
    """

    kind, short_name, display_name = "ar", "AR", "the autoregressive baseline"
    sampling_options = frozenset({"temperature", "top_p"})
    can_score = True

    def __init__(self, net: MambaConfig = MambaConfig(n_layers=6, d_state=32), optim: OptimConfig = OptimConfig(),
                 fim_rate: float = 0.0, vocab_size: int = 4096, seq_len: int = 128):
        super().__init__(vocab_size, seq_len, optim)
        if not 0 <= fim_rate <= 1:
            raise ConfigError(f"fim_rate must be in [0, 1], got {fim_rate}")
        if fim_rate > 0 and seq_len < 8:
            raise ConfigError(f"fill-in-the-middle needs seq_len >= 8, got {seq_len}")
        self.net_config = MambaConfig.from_dict(net)
        if self.net_config.block_size:
            raise ConfigError("net.block_size is for the bidirectional diffusion models; the AR baseline is causal "
                              "(set net.block_size: 0)")
        self.fim_rate = fim_rate
        self.save_configs(net=self.net_config, fim_rate=fim_rate)
        # The three FIM sentinels <PRE>, <SUF>, <MID> are embedding rows after the tokenizer's vocabulary.
        self.sentinels = tuple(range(vocab_size, vocab_size + 3)) if fim_rate > 0 else ()
        self.net = ARLanguageModel(self.net_config, vocab_size + len(self.sentinels))
        # Validation / test aggregates as torchmetrics, so that DDP ranks are reduced together.
        self.eval_loss = torch.nn.ModuleDict({stage: MeanMetric() for stage in ("val", "test")})
        self.eval_ppl = torch.nn.ModuleDict({stage: Perplexity(ignore_index=-100) for stage in ("val", "test")})

    def next_token_nll(self, tokens: Tensor, given: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """(per-position NLL (B, L-1), the positions that count (B, L-1) bool, logits (B, L-1, V)) of predicting
        tokens[:, 1:] from tokens[:, :-1]; with a task's given mask, only the positions to generate count."""
        logits = self.net(tokens[:, :-1]).float()
        nll = F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none")
        counted = torch.ones_like(nll, dtype=torch.bool) if given is None else ~given[:, 1:]
        return nll, counted, logits

    def loss(self, batch) -> LossOutput:
        """Mean cross-entropy (nats per token) of the next token; text blocks are rearranged for FIM at fim_rate."""
        tokens, given = unpack(batch)
        if self.fim_rate > 0 and given is None:
            tokens = self.fim_rearrange(tokens)
        nll, counted, _ = self.next_token_nll(tokens, given)
        return LossOutput((nll * counted).sum() / counted.sum().clamp(min=1))

    def fim_rearrange(self, tokens: Tensor) -> Tensor:
        """A fim_rate share of the blocks (B, L) as <PRE> prefix <SUF> suffix <MID> middle (the block's last three
        tokens make room for the sentinels; cut points uniform), the rest as they are (global RNG)."""
        pre, suf, mid = self.sentinels
        out = tokens.clone()
        L_ = tokens.shape[1]
        chosen = torch.rand(len(tokens)) < self.fim_rate
        cuts = torch.randint(0, L_ - 2, (len(tokens), 2)).sort(dim=1).values
        for b in chosen.nonzero().flatten().tolist():
            i, j = cuts[b].tolist()
            row = tokens[b, :L_ - 3]
            out[b] = torch.cat([row.new_tensor([pre]), row[:i], row.new_tensor([suf]), row[j:], row.new_tensor([mid]),
                                row[i:j]])
        return out

    def validation_step(self, batch, batch_idx: int) -> None:
        self.log_next_token_metrics(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self.log_next_token_metrics(batch, "test")

    def log_next_token_metrics(self, batch, stage: str) -> None:
        tokens, given = unpack(batch)
        nll, counted, logits = self.next_token_nll(tokens, given)
        self.eval_loss[stage].update((nll * counted).sum() / counted.sum().clamp(min=1), counted.sum())
        # Perplexity over the counted positions (-100 is torchmetrics' ignore_index below).
        self.eval_ppl[stage].update(logits, tokens[:, 1:].masked_fill(~counted, -100))
        self.log(f"{stage}/loss", self.eval_loss[stage], prog_bar=True, batch_size=tokens.shape[0])
        self.log(f"{stage}/ppl", self.eval_ppl[stage], batch_size=tokens.shape[0])

    @property
    def max_length(self) -> int:
        """Decoding carries the Mamba-2 state token by token: it writes past its training context."""
        return MAX_RECURRENT_LENGTH

    @property
    def flops_per_token(self) -> float:
        """6 x parameters (Kaplan et al. 2020)."""
        return 6.0 * self.num_parameters()

    def generation_call(self):
        return self.net.step

    def forward_at_length(self, length: int):
        tokens = torch.zeros(1, length, dtype=torch.long, device=self.device)
        return lambda: self.net(tokens)

    @torch.no_grad()
    def score(self, tokens: Tensor, mask: Tensor) -> tuple[float, int]:
        """Summed negative log-likelihood (nats) of the tokens where mask is True, each predicted from all
        tokens before it; tokens (B, L) start with EOS. Returns (total NLL, number of scored tokens)."""
        logits = self.net(tokens[:, :-1]).float()
        nll = F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none")
        m = mask[:, 1:]
        return float((nll * m).sum()), int(m.sum())

    def fill_group(self, tokens: Tensor, given: Tensor, cfg: SamplingConfig, streams: ExampleStreams,
                   on_step: OnStep | None, on_commit=None) -> Tensor:
        """Left to right, one recurrent `step` per position after EOS: a given position is fed as it is (teacher
        forcing), the others are drawn from the model given everything to their left; a plain autoregressive
        model never sees what is to its right. The positions given in every row from the start are one prefill.
        A FIM-trained model fills each gap that has given text after it from a <PRE> left <SUF> right <MID>
        prompt instead (right: the given tokens up to the next gap)."""
        if self.sentinels and bool((~given[:, :-1] & given[:, 1:]).any()):
            return self._fill_in_the_middle(tokens, given, cfg, streams, on_step, on_commit)
        B, L = tokens.shape
        not_given = (~given).int()
        prefix = int(not_given.argmax(1).min()) if bool(not_given.any()) else L  # given in every row up to here
        ids = torch.cat([tokens.new_full((B, 1), self.eos_id), tokens[:, :prefix]], dim=1)
        out = torch.where(given, tokens, torch.full_like(tokens, -1))
        self._decode(ids, range(prefix, L), out, given, cfg, streams, on_step, on_commit=on_commit)
        return out

    def _decode(self, ids: Tensor, positions, out: Tensor, given: Tensor, cfg: SamplingConfig,
                streams: ExampleStreams, on_step: OnStep | None, step_offset: int = 0, on_commit=None) -> None:
        """Prefill ids (b, P), then write one token per position of `out` (b, L) in turn: the given one, or one
        drawn from the model (never a FIM sentinel)."""
        logits, state = self.net.prefill(ids)
        step = self.generation_fn()
        positions = list(positions)
        for k, pos in enumerate(positions):
            drawn = sample_tokens(logits[..., :self.vocab_size], cfg.temperature, cfg.top_p, streams)
            token = torch.where(given[:, pos], out[:, pos], drawn)
            out[:, pos] = token
            if on_step is not None:
                on_step(step_offset + k, out)
            if on_commit is not None:  # each token is final once drawn
                on_commit(out)
            if k + 1 < len(positions):
                logits, state = step(token, state)

    def _fill_in_the_middle(self, tokens: Tensor, given: Tensor, cfg: SamplingConfig, streams: ExampleStreams,
                            on_step: OnStep | None, on_commit=None) -> Tensor:
        """Row by row, gap by gap, left to right: a gap followed by given text is generated after
        <PRE> everything left of it <SUF> the given text up to the next gap <MID>; a trailing gap continues
        EOS + everything left of it."""
        pre, suf, mid = self.sentinels
        out = torch.where(given, tokens, torch.full_like(tokens, -1))
        done = 0
        for b in range(len(tokens)):
            row_given = given[b:b + 1]
            pos, L = 0, tokens.shape[1]
            while pos < L:
                if bool(row_given[0, pos]):
                    pos += 1
                    continue
                end = pos
                while end < L and not bool(row_given[0, end]):
                    end += 1
                right = end
                while right < L and bool(row_given[0, right]):
                    right += 1
                left_ids = out[b:b + 1, :pos]
                if end < L:
                    ids = torch.cat([left_ids.new_tensor([[pre]]), left_ids, left_ids.new_tensor([[suf]]),
                                     out[b:b + 1, end:right], left_ids.new_tensor([[mid]])], dim=1)
                else:
                    ids = torch.cat([left_ids.new_tensor([[self.eos_id]]), left_ids], dim=1)
                report = None if on_step is None else (lambda i, _row, b=b: on_step(i, out))
                commit = None if on_commit is None else (lambda _row: on_commit(out))
                self._decode(ids, range(pos, end), out[b:b + 1], row_given, cfg, streams.subset([b]), report, done,
                             commit)
                done += end - pos
                pos = end
        return out


def perplexity(nll: float, count: int) -> float:
    return math.exp(nll / max(count, 1))
