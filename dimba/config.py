"""What every configuration dataclass shares: a plain-dict round trip (checkpoints store plain dicts, which
load with `torch.load(weights_only=True)`) and one-line validation errors; and where the shipped YAML configs are."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

from dimba.errors import ConfigError


def check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def one_of(name: str, value: str, choices: tuple[str, ...]) -> None:
    check(value in choices, f"{name} must be one of {choices}, got {value!r}")


@dataclass
class Config:
    """Base of the configuration dataclasses (a dataclass itself, so that jsonargparse reads its subclasses as
    plain nested groups): `to_dict`, and `from_dict` that refuses unknown keys with one line."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data):
        if isinstance(data, cls):  # a copy: default instances in signatures must never be shared
            data = data.to_dict()
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        check(not unknown, f"unknown {cls.__name__} settings: {', '.join(unknown)}")
        return cls(**data)


def config_path(name: str = "") -> Path:
    """The shipped configs (`base.yaml`, `model/hybrid.yaml`, ...): the folder, or the file `name` in it. They are
    package data, so an install from a wheel has them too (`dimba configs` prints them)."""
    return Path(__file__).resolve().parent / "configs" / name
