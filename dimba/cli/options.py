"""Argument types shared by the verbs outside LightningCLI (predict, eval, bench)."""

from __future__ import annotations

import argparse

import torch


def device_arg(value: str) -> str:
    """--device: a torch device this machine has (asking for CUDA where torch sees none is a usage error, not a
    traceback from the first tensor moved)."""
    try:
        device = torch.device(value)
    except RuntimeError as err:
        raise argparse.ArgumentTypeError(f"not a torch device: {value!r}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{value}: torch sees no CUDA device on this machine")
    return value


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
