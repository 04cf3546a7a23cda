"""What every model kind shares as a LightningModule: the tokenizer that travels with every checkpoint, the
optimiser, the loss / logging split, and one generation interface.

A model kind implements `loss(batch)`, `sample(...)` and names the sampling options it reads
(`sampling_options`); `generate` checks the request once for every kind, and `complete` is the text-in,
text-out Python API on top of it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields

import lightning as L
import torch
from torch import Tensor, nn

from dimba.config import Config
from dimba.data.tokenizer import Tokenizer
from dimba.errors import ConfigError, DimbaError
from dimba.models.kernels import mamba_kernels
from dimba.sampling import WHOLE_SEQUENCE_STEPS, ExampleStreams, SamplingConfig
from dimba.training.optim import OptimConfig, build_optimizer

# on_step(step, tokens): after each step of generation, tokens holds the current guess of every generated
# position, -1 where a model has not decided one yet. GroupStep(step, rows, tokens): the same for a group of rows.
OnStep = Callable[[int, Tensor], None]
GroupStep = Callable[[int, list[int], Tensor], None]
GroupCommit = Callable[[list[int], Tensor], None]

# What a model whose Mamba-2 state carries (AR, block diffusion) generates at most: no context limits it, but a
# bound keeps one line of input sane.
MAX_RECURRENT_LENGTH = 1 << 20


def unpack(batch) -> tuple[Tensor, Tensor | None]:
    """(tokens (B, L), given (B, L) bool or None). Text batches are token blocks; task batches (reasoning tasks,
    `dimba.data.tasks`) are dicts that also say which positions are given (the question) and which to generate."""
    if isinstance(batch, dict):
        return batch["tokens"], batch["given"]
    return batch, None


@dataclass
class LossOutput:
    """What `loss(batch)` returns: the scalar to optimise and named scalars to log beside it."""

    total: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


def check_state_dict(expected: dict, saved: dict, source) -> None:
    """One clear line instead of load_state_dict's traceback when the weights do not fit the configuration."""
    for key, value in saved.items():
        if key in expected and tuple(expected[key].shape) != tuple(getattr(value, "shape", ())):
            raise DimbaError(f"{source}: its {key} has shape {tuple(getattr(value, 'shape', ()))} but its "
                             f"configuration builds {tuple(expected[key].shape)}; use the model settings of the run "
                             "that wrote it")
    missing, extra = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
    if missing or extra:
        raise DimbaError(f"{source} does not fit its model: missing {missing[:3]}, unexpected {extra[:3]}; use the "
                         "model settings of the run that wrote it")


class LanguageModelBase(L.LightningModule):
    """Base of every model kind. Subclasses build `self.net`, call `save_configs(...)` in their constructor, and
    implement `loss`, `sample`, `generation_call`, `flops_per_token`."""

    net: nn.Module
    kind = "model"  # short machine name, in results files
    short_name = "model"  # in tables and plots
    display_name = "this model"  # in sentences
    sampling_options: frozenset[str] = frozenset()  # SamplingConfig fields the model reads
    can_score = False  # can judge text (`score`): autoregressive models only
    block_size = 0  # block diffusion's block (`dimba.training.blockwise`); 0: none

    def __init__(self, vocab_size: int, seq_len: int, optim: OptimConfig | dict):
        super().__init__()
        if vocab_size < 1 or seq_len < 2:
            raise ConfigError(f"need vocab_size >= 1 and seq_len >= 2, got {vocab_size}, {seq_len}")
        self.vocab_size, self.seq_len = vocab_size, seq_len
        self.optim_config = OptimConfig.from_dict(optim)
        self.tokenizer: Tokenizer | None = None  # from the data module; travels with every checkpoint
        self._compiled_call: Callable | None = None

    def save_configs(self, **configs) -> None:
        """Store the constructor's arguments as plain values (checkpoints load with weights_only=True and
        LightningCLI re-parses them on resume), with the class path that rebuilds the model."""
        cls = type(self)
        hparams = {"_class_path": f"{cls.__module__}.{cls.__qualname__}", "vocab_size": self.vocab_size,
                   "seq_len": self.seq_len, "optim": self.optim_config.to_dict()}
        hparams.update({k: v.to_dict() if isinstance(v, Config) else v for k, v in configs.items()})
        self.save_hyperparameters(hparams)

    # ------------------------------------------------------------------ training
    def loss(self, batch) -> LossOutput:
        """The training objective on a batch: token blocks (B, L), or a task batch (see `unpack`)."""
        raise NotImplementedError

    def training_step(self, batch, batch_idx: int) -> Tensor:
        out = self.loss(batch)
        self.log_training(out, unpack(batch)[0].shape[0])
        return out.total

    def log_training(self, out: LossOutput, batch_size: int) -> None:
        self.log_dict({"train/loss": out.total, **{f"train/{k}": v for k, v in out.metrics.items()}},
                      batch_size=batch_size)
        self.log("loss", out.total, prog_bar=True, logger=False, batch_size=batch_size)

    def configure_optimizers(self):
        max_steps = self.trainer.max_steps if self._trainer is not None else None
        return build_optimizer(self.net, self.optim_config, max_steps)

    @property
    def flops_per_token(self) -> float:
        raise NotImplementedError

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    # ------------------------------------------------------------------ checkpoints
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "tokenizer"):
            tokenizer = datamodule.tokenizer
            if tokenizer.vocab_size != self.vocab_size:
                raise DimbaError(f"the data's vocabulary has {tokenizer.vocab_size} tokens but the model "
                                 f"was built for {self.vocab_size}")
            self.tokenizer = tokenizer

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.tokenizer is not None:
            checkpoint["tokenizer_json"] = self.tokenizer.to_str()
        # The random stream of the training steps (t, noise, prompt lengths, dropout), so that a resumed run
        # draws what the uninterrupted one would have. Nothing else draws from the global RNG between
        # training steps: the data loaders and the samplers have their own generators.
        checkpoint["rng_state"] = {"torch": torch.get_rng_state(),
                                   "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
        if self._trainer is not None:  # the latest validation figures, for the exported model card
            checkpoint["validation"] = {k: float(v) for k, v in self.trainer.callback_metrics.items()
                                        if k.startswith(("val", "test")) and v.numel() == 1}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._check_tokenizer(checkpoint)
        self._check_shapes(checkpoint)
        self._pending_rng_state = checkpoint.get("rng_state")

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # Restored here, after Lightning's set-up and the data-loader iterator, right before the first step.
        state = getattr(self, "_pending_rng_state", None)
        if state is not None:
            torch.set_rng_state(state["torch"])
            if state["cuda"] is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda"])
            self._pending_rng_state = None

    def _check_shapes(self, checkpoint: dict) -> None:
        """One clear line instead of load_state_dict's size-mismatch traceback when the config differs (resuming
        `fit` with other model settings)."""
        if checkpoint.get("state_dict"):
            check_state_dict(self.state_dict(), checkpoint["state_dict"], "the checkpoint")

    def _check_tokenizer(self, checkpoint: dict) -> None:
        saved = checkpoint.get("tokenizer_json")
        if not saved:
            return
        saved = Tokenizer.from_str(saved)
        # Resuming `fit` (or `validate`) on other data: setup() already took the data module's tokenizer.
        if self.tokenizer is not None and self.tokenizer.fingerprint != saved.fingerprint:
            raise DimbaError(f"the checkpoint was trained with another tokenizer (vocabulary {saved.vocab_size}, "
                             f"this data's: {self.tokenizer.vocab_size}); use the corpus and vocab_size (or "
                             "tokenizer_path) of the run that wrote it")
        self.tokenizer = saved

    # ------------------------------------------------------------------ generation
    @property
    def max_length(self) -> int:
        """The longest sequence (prompt and generated tokens) this model generates: its training context."""
        return self.seq_len

    def check_sampling(self, cfg: SamplingConfig) -> None:
        """Refuse, in one line, sampling settings this model kind would otherwise ignore."""
        unsupported = sorted(cfg.changed() - self.sampling_options)
        if unsupported:
            settings = ", ".join(f"{name}={getattr(cfg, name)!r}" for name in unsupported)
            raise ConfigError(f"{self.display_name} cannot honour the sampling setting(s) {settings}; it reads "
                              f"only {', '.join(sorted(self.sampling_options | {'seed'}))}")

    @property
    def default_steps(self) -> int:
        """Denoising steps of a request that leaves them unset: a block model's block size (one token per network
        call, its best measured per block), else WHOLE_SEQUENCE_STEPS."""
        return self.block_size or WHOLE_SEQUENCE_STEPS

    def resolve_sampling(self, cfg: SamplingConfig) -> SamplingConfig:
        """cfg with the options it leaves to the model (steps null) set to this model's defaults."""
        if cfg.steps is None and "steps" in self.sampling_options:
            return cfg.replace(steps=self.default_steps)
        return cfg

    @property
    def eos_id(self) -> int:
        """The end-of-sequence token (it starts and ends documents): the tokenizer's, or 0 without one."""
        return self.tokenizer.eos_id if self.tokenizer is not None else 0

    @torch.no_grad()
    def fill(self, sequences: list[list[int]], given: list[list[bool]], cfg: SamplingConfig | None = None,
             on_step: GroupStep | None = None, example_ids: Sequence[int] | None = None,
             on_commit: GroupCommit | None = None) -> list[list[int]]:
        """Complete token sequences at the positions not given: conditioning on any positions (a prompt is a
        given prefix, infilling a given prefix and suffix, a puzzle its given cells). Values at positions not
        given are ignored. Returns every sequence with all its positions set.

        example_ids: the examples' indices in the whole set being sampled (default 0..B-1); each example draws
        from its own random stream derived from (cfg.seed, its index), so results do not depend on the batch.
        Sequences of one length are sampled together (the network sees each example's own sequence only).
        on_step(i, rows, guess): after step i of the group of examples `rows`, their current tokens (b, L),
        -1 where not decided yet. on_commit(rows, tokens): when tokens are committed for good, left to right (a
        block of a block model, a token of the AR model), the group's tokens (b, L), -1 where not decided yet.
        """
        cfg = cfg or SamplingConfig()
        if len(given) != len(sequences) or any(len(g) != len(s) for g, s in zip(given, sequences, strict=True)):
            raise ConfigError("every sequence needs a given-mask of its own length")
        longest = max((len(s) for s in sequences), default=0)
        if longest > self.max_length:
            raise ConfigError(f"a sequence of {longest} tokens is longer than {self.display_name} can generate "
                              f"({self.max_length} tokens, its context)")
        bad = [t for s, g in zip(sequences, given, strict=True) for t, k in zip(s, g, strict=True)
               if k and not 0 <= t < self.vocab_size]
        if bad:
            raise ConfigError(f"token id {bad[0]} is outside the vocabulary (0..{self.vocab_size - 1})")
        self.check_sampling(cfg)
        cfg = self.resolve_sampling(cfg)
        ids = list(range(len(sequences))) if example_ids is None else list(example_ids)
        if len(ids) != len(sequences):
            raise ConfigError(f"{len(ids)} example ids for {len(sequences)} sequences")
        streams = ExampleStreams(cfg.seed, ids, self.device)
        groups: dict[int, list[int]] = {}
        for i, seq in enumerate(sequences):
            groups.setdefault(len(seq), []).append(i)
        out: list[list[int]] = [[] for _ in sequences]
        for length, rows in groups.items():
            tokens = torch.tensor([[t if k else 0 for t, k in zip(sequences[r], given[r], strict=True)] for r in rows],
                                  dtype=torch.long, device=self.device).view(len(rows), length)
            mask = torch.tensor([given[r] for r in rows], dtype=torch.bool, device=self.device).view(len(rows), length)
            report = None if on_step is None else (lambda i, guess, rows=rows: on_step(i, rows, guess))
            commit = None if on_commit is None else (lambda guess, rows=rows: on_commit(rows, guess))
            filled = self.fill_group(tokens, mask, cfg, streams.subset(rows), report, commit)
            for r, row in zip(rows, torch.where(mask, tokens, filled).tolist(), strict=True):
                out[r] = row
        return out

    def generate(self, prompts: list[list[int]], gen_len: int, cfg: SamplingConfig | None = None,
                 on_step: OnStep | None = None, example_ids: Sequence[int] | None = None) -> list[list[int]]:
        """gen_len new token ids after each prompt (a list of token ids, possibly empty): `fill` with the prompt
        given. on_step(i, tokens): after step i, the generated positions' current tokens (B, gen_len)."""
        if gen_len < 1:
            raise ConfigError(f"the generation length must be >= 1, got {gen_len}")
        if not prompts:
            return []
        longest = max(len(p) for p in prompts)
        if longest + gen_len > self.max_length:  # before a list of gen_len placeholders is built
            raise ConfigError(f"{longest} prompt tokens + {gen_len} new ones are more than {self.display_name} can "
                              f"generate ({self.max_length} tokens, its context)")
        sequences = [list(p) + [0] * gen_len for p in prompts]
        given = [[True] * len(p) + [False] * gen_len for p in prompts]
        report = None
        if on_step is not None:
            current = torch.full((len(prompts), gen_len), -1, dtype=torch.long, device=self.device)

            def report(i, rows, guess):
                for j, r in enumerate(rows):
                    current[r] = guess[j, len(prompts[r]):]
                on_step(i, current)

        filled = self.fill(sequences, given, cfg, report, example_ids)
        return [row[len(p):] for row, p in zip(filled, prompts, strict=True)]

    def fill_group(self, tokens: Tensor, given: Tensor, cfg: SamplingConfig, streams: ExampleStreams,
                   on_step: OnStep | None, on_commit: Callable[[Tensor], None] | None = None) -> Tensor:
        """The model kind's own generation: tokens and given (b, L), all of one length, the request already
        checked -> (b, L) tokens (positions given are kept by `fill` whatever this returns there); on_step(i,
        guess (b, L)) after each step, -1 where not decided yet; on_commit(tokens (b, L)) when tokens are
        committed for good, left to right (models that commit that way)."""
        raise NotImplementedError

    def complete(self, prompts: str | list[str], length: int | None = None, batch_size: int = 16,
                 **sampling) -> str | list[str]:
        """Text in, text out: the completion (without the prompt) of each prompt, `length` new tokens each
        (default: the rest of the model's context), stopped at the end-of-sequence token. Keyword arguments
        are SamplingConfig fields (steps=32, temperature=0.9, seed=1, ...)."""
        if self.tokenizer is None:
            raise DimbaError("this model has no tokenizer; load it with dimba.load(checkpoint)")
        names = {f.name for f in fields(SamplingConfig)}
        unknown = sorted(set(sampling) - names)
        if unknown:
            raise ConfigError(f"unknown sampling option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        cfg = SamplingConfig(**sampling)
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        single = isinstance(prompts, str)
        texts = [prompts] if single else list(prompts)
        encoded = [self.tokenizer.encode(p) for p in texts]
        longest = max((len(e) for e in encoded), default=0)
        length = length if length is not None else self.seq_len - longest
        if length < 1:
            raise ConfigError(f"nothing to generate: length {length} (the longest prompt has {longest} tokens, "
                              f"the context {self.seq_len})")
        out: list[list[int]] = []
        for lo in range(0, len(encoded), batch_size):
            batch = encoded[lo:lo + batch_size]
            out += self.generate(batch, length, cfg, example_ids=range(lo, lo + len(batch)))
        decoded = [self.tokenizer.decode(ids, stop_at_eos=True) for ids in out]
        return decoded[0] if single else decoded

    def describe(self, cfg: SamplingConfig) -> str:
        """A row label for results tables: the model (and its block size), its step count when it has steps, and
        every option it reads that differs from the default, e.g. "DIMBA hybrid, 32 steps, reveal confidence"."""
        cfg = self.resolve_sampling(cfg)
        parts = [self.short_name + (f" block {self.block_size}" if self.block_size else "")]
        if "steps" in self.sampling_options:
            parts.append(f"{cfg.steps} steps" + (" per block" if self.block_size else ""))
        parts += [f"{name.replace('_', ' ')} {getattr(cfg, name)}"
                  for name in sorted(cfg.changed() & self.sampling_options - {"steps"})]
        return ", ".join(parts)

    def forward_at_length(self, length: int) -> Callable[[], Tensor]:
        """A call running one full-sequence network forward at batch 1 (for cost-against-length sweeps)."""
        raise NotImplementedError

    def generation_call(self) -> Callable:
        """The network call that generation repeats (the AR step, the denoiser's forward); subclasses name it."""
        raise NotImplementedError

    def generation_fn(self) -> Callable:
        """What generation calls: generation_call itself, or its torch.compile'd version once
        `compile_generation` has run."""
        return self._compiled_call or self.generation_call()

    def compile_generation(self, mode: str = "default") -> None:
        """Generate through torch.compile (inductor) from now on: the tens of small ops per mixer and step
        become a few fused kernels, which on a CPU makes batch-1 AR decoding about 3x faster; a baseline left
        uncompiled would flatter the diffusion models. Inference only. dynamic=False: one graph per input
        shape, compiled at its first call (tens of seconds on a CPU), as a benchmark cell repeats. mode
        "reduce-overhead" captures CUDA graphs on a GPU (the launch-bound AR step's fair setting there)."""
        mamba_kernels()  # probe the optional CUDA kernels now: an import inside the trace would break it
        self._compiled_call = torch.compile(self.generation_call(), dynamic=False, mode=mode)
