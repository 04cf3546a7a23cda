"""Speed of the Mamba-2 mixer (`dimba bench-mamba2`): the pure-torch SSD path against transformers' plain-PyTorch
Mamba2 mixer on the same weights (outputs checked equal first), and time against sequence length."""

from __future__ import annotations

import contextlib
import importlib.util
import math

import torch

from dimba.errors import ConfigError, DimbaError
from dimba.eval.timing import loglog_slope, machine_description, median_seconds
from dimba.models.mamba2 import Mamba2
from dimba.training.checkpoint import usable_device


def transformers_mixer(ours: Mamba2):
    """transformers' Mamba2Mixer with our weights loaded (same parameter names), or None (with the reason printed)
    if it is not installed, or on CUDA without causal-conv1d: there its training branch calls mamba-ssm's fused
    kernel, which then fails (seen on an H200 with the pure-Python mamba-ssm wheel)."""
    try:
        from transformers import Mamba2Config
        from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer
    except ImportError:
        print("# transformers not installed: no reference mixer")
        return None
    if ours.out_proj.weight.is_cuda and importlib.util.find_spec("causal_conv1d") is None:
        print("# transformers' mixer skipped: on CUDA it needs causal-conv1d, which is not installed")
        return None
    cfg = Mamba2Config(hidden_size=ours.d_model, num_heads=ours.nheads, head_dim=ours.headdim,
                       state_size=ours.d_state, expand=ours.expand, n_groups=ours.ngroups,
                       chunk_size=ours.chunk_size, conv_kernel=ours.d_conv, use_bias=False, use_conv_bias=True,
                       num_hidden_layers=1, layer_norm_epsilon=1e-5)
    theirs = Mamba2Mixer(cfg, layer_idx=0)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    return theirs.to(ours.out_proj.weight.device)


def time_mixer(mixer, x: torch.Tensor, backward: bool, bf16: bool, repeats: int) -> float:
    device = x.device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def run():
        with autocast:
            out = mixer(x)
        if backward:
            out.float().sum().backward()

    with contextlib.nullcontext() if backward else torch.no_grad():
        return median_seconds(run, device, warmup=1, repeats=repeats)


def bench_mamba2(device: str = "cpu", d_model: int = 256, length: int = 1024, batch: int = 4,
                 max_length: int = 16384, repeats: int = 5, quick: bool = False) -> None:
    """time the Mamba-2 mixer against transformers' plain-PyTorch mixer, and against sequence length

    Prints Markdown tables as it measures.

    Args:
        device: cpu or cuda
        d_model: the mixer's width
        length: sequence length of the comparison
        batch: batch size of the comparison
        max_length: longest L of the scaling sweep (from 256, doubling)
        repeats: timed repeats per cell (the median is reported)
        quick: tiny shapes and one repeat (a smoke test)
    """
    if quick:
        d_model, length, batch, max_length, repeats = 64, 128, 1, 512, 1
    for name, value in (("d_model", d_model), ("length", length), ("batch", batch), ("max_length", max_length),
                        ("repeats", repeats)):
        if value < 1:
            raise ConfigError(f"--{name} must be >= 1, got {value}")
    torch.manual_seed(0)
    device = usable_device(device)
    ours = Mamba2(d_model, impl="torch").to(device)
    theirs = transformers_mixer(ours)
    x = torch.randn(batch, length, d_model, device=device, requires_grad=True)
    tokens = batch * length
    print(f"# Mamba-2 mixer, d_model {d_model}, d_state {ours.d_state}, headdim {ours.headdim}, "
          f"batch {batch}, L {length}")
    print(f"# {machine_description(device)}")
    if theirs is not None:
        with torch.no_grad():
            a, b = ours(x), theirs(x)
        rel = ((a - b).norm() / b.norm()).item()
        print(f"# outputs vs transformers Mamba2Mixer: relative difference {rel:.2e}")
        if rel > 1e-4:
            raise DimbaError(f"outputs differ from transformers' mixer (relative {rel:.2e}); timings not comparable")
    print("| pass | precision | dimba torch (ms) | dimba tok/s | transformers (ms) | speed-up |")
    print("|---|---|---|---|---|---|")
    for backward in (False, True):
        for bf16 in (False, True):
            t_ours = time_mixer(ours, x, backward, bf16, repeats)
            t_theirs = time_mixer(theirs, x, backward, bf16, repeats) if theirs is not None else math.nan
            print(f"| {'fwd+bwd' if backward else 'fwd'} | {'bf16 autocast' if bf16 else 'fp32'} | "
                  f"{t_ours * 1e3:.1f} | {tokens / t_ours:,.0f} | {t_theirs * 1e3:.1f} | {t_theirs / t_ours:.2f}x |",
                  flush=True)

    print("\n| L (batch 1, fwd, fp32) | ms | tok/s |")
    print("|---|---|---|")
    lengths, times = [], []
    sweep = 256
    while sweep <= max_length:
        xl = torch.randn(1, sweep, d_model, device=device)
        t = time_mixer(ours, xl, backward=False, bf16=False, repeats=max(1, repeats // 2))
        lengths.append(sweep)
        times.append(t)
        print(f"| {sweep} | {t * 1e3:.1f} | {sweep / t:,.0f} |", flush=True)
        sweep *= 2
    slope = loglog_slope(lengths, times)
    if slope is not None:
        print(f"\nlog-log slope of time against L: {slope:.2f} (1.0 = linear)")
