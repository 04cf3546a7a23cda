"""How to sample, for every model kind: `SamplingConfig` (one place for the names, defaults, help and checks of
the sampling options; every verb that samples takes it as its `--sampling.*` group), random streams per example,
and turning logits into tokens (temperature, nucleus)."""

from __future__ import annotations

import hashlib
import math
import typing
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Literal

import torch
from torch import Tensor

from dimba.errors import ConfigError

Sampler = Literal["ddim", "ddpm"]
RevealOrder = Literal["random", "confidence"]
SAMPLERS: tuple[str, ...] = typing.get_args(Sampler)
REVEAL_ORDERS: tuple[str, ...] = typing.get_args(RevealOrder)
WHOLE_SEQUENCE_STEPS = 32  # a whole-sequence diffusion model's default steps (docs/results.md: 32 to 128 gain 3%)


@dataclass(frozen=True)
class SamplingConfig:
    """How to sample. Not a model hyper-parameter: any setting may be used with any checkpoint whose model kind
    reads it; a model refuses (ConfigError) a changed setting it cannot honour rather than ignore it."""

    steps: int | None = None
    """denoising steps (network calls per sample, or per block of a block model; diffusion models); null: the
    model's own default (`default_steps`: 32, or a block model's block size, one token per network call)"""
    sampler: Sampler = "ddim"
    """reverse update of Gaussian diffusion: ddim, or ddpm (= ddim with eta 1)"""
    eta: float = 0.0
    """DDIM stochasticity in [0, 1] (0: deterministic; ignored by ddpm)"""
    guidance: float = 1.0
    """classifier-free guidance scale (1 = conditional only, 0 = unconditional)"""
    self_condition: bool = True
    """feed the previous x0 estimate back (models trained with it)"""
    clamp_from: float = 1.0
    """fraction of the steps after which x0 snaps to the nearest embedding (1 = never)"""
    temperature: float = 1.0
    """temperature of the token draws (0 = argmax)"""
    top_p: float = 1.0
    """nucleus sampling: keep the smallest set of tokens with this much probability"""
    x0_temperature: float = 1.0
    """softmax temperature of the x0 estimate while denoising (< 1: likelier, less diverse text)"""
    reveal: RevealOrder = "random"
    """which hidden tokens a committing sampler reveals first: random, or confidence (the most probable first)"""
    stop_at_eos: bool = True
    """a block model stops after the block in which every row wrote the end-of-sequence token (false: it always
    writes the full length, as benchmarks need)"""
    warped_steps: bool = True
    """space the steps by the learned time warp when the model has one"""
    seed: int | None = 0
    """random seed; every example has its own stream, derived from the seed and the example's index, so results
    do not depend on the batch size (null: fresh entropy)"""

    def __post_init__(self):
        hints = typing.get_type_hints(SamplingConfig)
        for f in fields(self):
            value, kind = getattr(self, f.name), hints[f.name]
            if kind is float and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                      and math.isfinite(value)):
                raise ConfigError(f"{f.name} must be a finite number, got {value!r}")
            if kind is int and not (isinstance(value, int) and not isinstance(value, bool)):
                raise ConfigError(f"{f.name} must be an integer, got {value!r}")
            if kind is bool and not isinstance(value, bool):
                raise ConfigError(f"{f.name} must be true or false, got {value!r}")
            choices = typing.get_args(kind) if typing.get_origin(kind) is Literal else None
            if choices and value not in choices:
                raise ConfigError(f"{f.name} must be one of {choices}, got {value!r}")
        checks = [
            (self.steps is None or isinstance(self.steps, int) and not isinstance(self.steps, bool) and self.steps >= 1,
             f"steps must be >= 1 (an integer, or null: the model's default), got {self.steps!r}"),
            (0 <= self.eta <= 1, f"eta must be in [0, 1], got {self.eta}"),
            (self.guidance >= 0, f"guidance must be >= 0, got {self.guidance}"),
            (0 <= self.clamp_from <= 1, f"clamp_from must be in [0, 1], got {self.clamp_from}"),
            (self.temperature >= 0, f"temperature must be >= 0, got {self.temperature}"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (self.x0_temperature > 0, f"x0_temperature must be > 0, got {self.x0_temperature}"),
            (self.seed is None or isinstance(self.seed, int) and not isinstance(self.seed, bool),
             f"seed must be an integer or null, got {self.seed!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def changed(self) -> set[str]:
        """Names of the options set to something other than their default (the seed excepted)."""
        return {f.name for f in fields(self) if f.name != "seed" and getattr(self, f.name) != f.default}

    def as_dict(self) -> dict:
        return asdict(self)

    def replace(self, **changes) -> SamplingConfig:
        """A copy with some options changed (checked like a new one)."""
        return SamplingConfig(**{**self.as_dict(), **changes})


def _seed_from(*parts) -> int:
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # manual_seed takes < 2**63 safely


def sampling_generator(seed: int | None, device: torch.device | str = "cpu", stream: str = "sampling"
                       ) -> torch.Generator:
    """A generator seeded from a hash of (stream, seed), or fresh entropy for seed None.

    Why the hash: `torch.Generator().manual_seed(s)` replays the stream that `torch.manual_seed(s)` (and so
    `seed_everything: s`) gave the model's initialisation: starting noise could then hold the initial
    embedding table itself. `stream` separates uses that must not share draws (sampling, validation).
    """
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()  # fresh entropy, without touching the global RNG
    else:
        generator.manual_seed(_seed_from(stream, int(seed)))
    return generator


class ExampleStreams:
    """One random stream per example, seeded from (seed, the example's index): what example i draws does not
    depend on which examples share its batch, so results do not depend on the batch size, and two prompts
    never share their noise. seed None: fresh entropy per example."""

    def __init__(self, seed: int | None, example_ids: Sequence[int], device: torch.device | str = "cpu",
                 generators: list[torch.Generator] | None = None):
        self.device = torch.device(device)
        if generators is None:
            generators = []
            for i in example_ids:
                g = torch.Generator(device=self.device)
                if seed is None:
                    g.seed()
                else:
                    g.manual_seed(_seed_from("sampling", int(seed), int(i)))
                generators.append(g)
        self.generators = generators

    def __len__(self) -> int:
        return len(self.generators)

    def subset(self, rows: Sequence[int]) -> ExampleStreams:
        """The streams of some of the examples (shared, not copied: drawing from either advances both)."""
        return ExampleStreams(None, [], self.device, [self.generators[r] for r in rows])

    def randn(self, *shape: int) -> Tensor:
        """(B, *shape) standard normal draws, row b from example b's stream."""
        return torch.stack([torch.randn(shape, generator=g, device=self.device) for g in self.generators])

    def rand(self, *shape: int) -> Tensor:
        """(B, *shape) uniform draws in [0, 1), row b from example b's stream."""
        return torch.stack([torch.rand(shape, generator=g, device=self.device) for g in self.generators])


def nucleus(probs: Tensor, top_p: float) -> Tensor:
    """Zero all but the smallest set of tokens whose probability reaches top_p (Holtzman et al. 2020), (..., V)."""
    if top_p >= 1:
        return probs
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    # Keep a token if the mass before it is below top_p (so the first token is always kept).
    keep = (sorted_probs.cumsum(-1) - sorted_probs) < top_p
    return torch.zeros_like(probs).scatter(-1, order, sorted_probs * keep)


def draw_from(probs: Tensor, streams: ExampleStreams | None) -> Tensor:
    """Token ids (B, ...) drawn from unnormalised probabilities (B, ..., V) by inverse CDF, one uniform per
    position from its example's stream (the global RNG when streams is None)."""
    cdf = probs.float().cumsum(-1)
    u = streams.rand(*probs.shape[1:-1]) if streams is not None else torch.rand(probs.shape[:-1],
                                                                                device=probs.device)
    # The first index whose cumulative mass exceeds u * total: never a zero-probability token.
    target = (u.to(cdf.device) * cdf[..., -1]).unsqueeze(-1)
    return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp(max=probs.shape[-1] - 1)


def sample_tokens(logits: Tensor, temperature: float = 1.0, top_p: float = 1.0,
                  streams: ExampleStreams | None = None) -> Tensor:
    """logits (B, ..., V) -> token ids (B, ...). temperature 0 is argmax."""
    if temperature < 0 or not 0 < top_p <= 1:
        raise ConfigError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    if temperature == 0:
        return logits.argmax(-1)
    probs = nucleus(torch.softmax(logits.float() / temperature, dim=-1), top_p)
    return draw_from(probs, streams)
