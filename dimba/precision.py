"""Precision helpers shared by the networks and the diffusion maths."""

from __future__ import annotations

import torch
from torch import Tensor


def upcast(t: Tensor) -> Tensor:
    """At least fp32: bf16/fp16 go to fp32, fp64 stays fp64 (the tests compare against float64 references).

    Schedules, norms, the SSM scan and sampler updates go through this even under bf16 autocast: their
    exponentials, long sums and square roots of small differences lose too much in 8 bits of mantissa.
    """
    return t if t.dtype == torch.float64 else t.float()


def linear_fp32(x: Tensor, layer: torch.nn.Linear) -> Tensor:
    """`layer(x)` computed in fp32 (fp64 stays fp64) even under bf16 autocast, for the output projections: the
    logits feed a softmax over the whole vocabulary and a V-term expected embedding."""
    with torch.autocast(x.device.type, enabled=False):
        x = upcast(x)
        bias = None if layer.bias is None else layer.bias.to(x.dtype)
        return torch.nn.functional.linear(x, layer.weight.to(x.dtype), bias)
