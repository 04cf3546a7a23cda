"""How to sample, for every model kind: `SamplingConfig` (one place for the names, defaults, help and checks of
the sampling options; `dimba predict`'s flags are generated from it), random streams per example, and turning
logits into tokens (temperature, nucleus)."""

from __future__ import annotations

import argparse
import hashlib
import math
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields

import torch
from torch import Tensor

from dimba.errors import ConfigError

SAMPLERS = ("ddim", "ddpm")
REVEAL_ORDERS = ("random", "confidence")
LATENT_TARGETS = ("mean", "sample")
STEP_SPACINGS = ("uniform", "cosine")


# How a flag's text becomes a SamplingConfig field's value, by the field's annotation (booleans aside).
_PARSE_VALUE = {"int": int, "float": float, "str": str, "int | None": int}


def _option(default, help: str, **extra):
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class SamplingConfig:
    """How to sample. Not a model hyper-parameter: any setting may be used with any checkpoint whose model kind
    reads it; a model refuses (ConfigError) a changed setting it cannot honour rather than ignore it."""

    steps: int = _option(32, "denoising steps (network calls per sample; diffusion models)")
    sampler: str = _option("ddim", "reverse update of Gaussian diffusion: ddim, or ddpm (= ddim with eta 1)",
                           choices=SAMPLERS)
    eta: float = _option(0.0, "DDIM stochasticity in [0, 1] (0: deterministic; ignored by ddpm)")
    guidance: float = _option(1.0, "classifier-free guidance scale (1 = conditional only, 0 = unconditional)")
    self_condition: bool = _option(True, "feed the previous x0 estimate back (models trained with it)")
    clamp_from: float = _option(1.0, "fraction of the steps after which x0 snaps to the nearest embedding (1 = never)")
    temperature: float = _option(1.0, "temperature of the final token draw (0 = argmax)")
    top_p: float = _option(1.0, "nucleus sampling: keep the smallest set of tokens with this much probability")
    x0_temperature: float = _option(1.0, "softmax temperature of the x0 estimate while denoising (< 1: likelier, "
                                         "less diverse text)")
    reveal: str = _option("random", "which hidden tokens a committing sampler reveals first: random, or "
                                    "confidence (the most probable first)", choices=REVEAL_ORDERS)
    latent_target: str = _option("mean", "where a committing sampler moves the still-hidden latents each step: mean "
                                          "(the x0 estimate, softmax(logits / x0_temperature) E), or sample (the "
                                          "embedding of a token drawn from the logits, as CANDI's cached sampler)",
                                 choices=LATENT_TARGETS)
    step_spacing: str = _option("uniform", "a committing sampler's time grid: uniform in t, or cosine (t = sin(pi/2 u) "
                                           "for uniform u: short steps near t = 1, so the first tokens are committed a "
                                           "few at a time, as MaskGIT's cosine schedule)", choices=STEP_SPACINGS)
    warped_steps: bool = _option(True, "space the steps by the learned time warp when the model has one")
    seed: int | None = _option(0, "random seed; every example has its own stream, derived from the seed and "
                                  "the example's index, so results do not depend on the batch size")

    def __post_init__(self):
        for f in fields(self):
            value, choices = getattr(self, f.name), f.metadata.get("choices")
            if f.type == "float" and not (isinstance(value, (int, float)) and math.isfinite(value)):
                raise ConfigError(f"{f.name} must be a finite number, got {value!r}")
            if choices is not None and value not in choices:
                raise ConfigError(f"{f.name} must be one of {choices}, got {value!r}")
        checks = [
            (self.steps >= 1, f"steps must be >= 1, got {self.steps}"),
            (0 <= self.eta <= 1, f"eta must be in [0, 1], got {self.eta}"),
            (self.guidance >= 0, f"guidance must be >= 0, got {self.guidance}"),
            (0 <= self.clamp_from <= 1, f"clamp_from must be in [0, 1], got {self.clamp_from}"),
            (self.temperature >= 0, f"temperature must be >= 0, got {self.temperature}"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (self.x0_temperature > 0, f"x0_temperature must be > 0, got {self.x0_temperature}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def changed(self) -> set[str]:
        """Names of the options set to something other than their default (the seed excepted)."""
        return {f.name for f in fields(self) if f.name != "seed" and getattr(self, f.name) != f.default}

    def as_dict(self) -> dict:
        return asdict(self)


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per SamplingConfig field: `--name VALUE`; booleans that default to True become `--no_name`."""
    group = parser.add_argument_group("sampling (any checkpoint; a model refuses options it cannot honour)")
    for f in fields(SamplingConfig):
        meta = dict(f.metadata)
        if f.type == "bool":
            flag = f"--no_{f.name}" if f.default else f"--{f.name}"
            group.add_argument(flag, dest=f.name, action="store_false" if f.default else "store_true",
                               help=meta["help"])
            continue
        group.add_argument(f"--{f.name}", type=_PARSE_VALUE[f.type], default=f.default, choices=meta.get("choices"),
                           help=f"{meta['help']} (default: {f.default})")


def parse_overrides(text: str) -> dict:
    """`KEY=VALUE[,KEY=VALUE...]` -> typed SamplingConfig fields, checked (e.g. `reveal=confidence,eta=0.5`).
    Raises argparse.ArgumentTypeError (a usage error) for an unknown name or a bad value."""
    types = {f.name: f.type for f in fields(SamplingConfig) if f.name != "seed"}
    out = {}
    for item in filter(None, text.split(",")):
        name, sep, value = item.partition("=")
        if not sep or name not in types:
            raise argparse.ArgumentTypeError(f"{item!r} is not NAME=VALUE with NAME one of {', '.join(types)}")
        kind = types[name]
        try:
            if kind == "bool":
                if value.lower() not in ("true", "false"):
                    raise ValueError(value)
                out[name] = value.lower() == "true"
            else:
                out[name] = _PARSE_VALUE[kind](value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be of type {kind}, got {value!r}") from None
    try:
        SamplingConfig(**out)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return out


def sampling_config_from_args(args: argparse.Namespace) -> SamplingConfig:
    return SamplingConfig(**{f.name: getattr(args, f.name) for f in fields(SamplingConfig)
                             if f.default is not MISSING})


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
