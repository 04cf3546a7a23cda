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
