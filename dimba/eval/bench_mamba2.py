"""Speed of the Mamba-2 mixer: the pure-torch SSD path against transformers' plain-PyTorch Mamba2 mixer
on the same weights (outputs checked equal first), and time against sequence length.

    python -m dimba.eval.bench_mamba2 [--device cuda] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import math

import torch

from dimba.eval.timing import loglog_slope, machine_description, median_seconds
from dimba.models.mamba2 import Mamba2


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--d_model", type=int, default=256)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max_length", type=int, default=16384, help="longest L of the scaling sweep")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, one repeat (a smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.d_model, args.length, args.batch, args.max_length, args.repeats = 64, 128, 1, 512, 1
    torch.manual_seed(0)
    device = torch.device(args.device)
    ours = Mamba2(args.d_model, impl="torch").to(device)
    theirs = transformers_mixer(ours)
    x = torch.randn(args.batch, args.length, args.d_model, device=device, requires_grad=True)
    tokens = args.batch * args.length
    print(f"# Mamba-2 mixer, d_model {args.d_model}, d_state {ours.d_state}, headdim {ours.headdim}, "
          f"batch {args.batch}, L {args.length}")
    print(f"# {machine_description(device)}")
    if theirs is not None:
        with torch.no_grad():
            a, b = ours(x), theirs(x)
        rel = ((a - b).norm() / b.norm()).item()
        print(f"# outputs vs transformers Mamba2Mixer: relative difference {rel:.2e}")
        if rel > 1e-4:
            raise SystemExit(f"outputs differ from transformers' mixer (relative {rel:.2e}); timings not comparable")
    print("| pass | precision | dimba torch (ms) | dimba tok/s | transformers (ms) | speed-up |")
    print("|---|---|---|---|---|---|")
    for backward in (False, True):
        for bf16 in (False, True):
            t_ours = time_mixer(ours, x, backward, bf16, args.repeats)
            t_theirs = time_mixer(theirs, x, backward, bf16, args.repeats) if theirs is not None else math.nan
            print(f"| {'fwd+bwd' if backward else 'fwd'} | {'bf16 autocast' if bf16 else 'fp32'} | "
                  f"{t_ours * 1e3:.1f} | {tokens / t_ours:,.0f} | {t_theirs * 1e3:.1f} | {t_theirs / t_ours:.2f}x |")

    print("\n| L (batch 1, fwd, fp32) | ms | tok/s |")
    print("|---|---|---|")
    lengths, times = [], []
    length = 256
    while length <= args.max_length:
        xl = torch.randn(1, length, args.d_model, device=device)
        t = time_mixer(ours, xl, backward=False, bf16=False, repeats=max(1, args.repeats // 2))
        lengths.append(length)
        times.append(t)
        print(f"| {length} | {t * 1e3:.1f} | {length / t:,.0f} |")
        length *= 2
    if len(lengths) > 1:
        print(f"\nlog-log slope of time against L: {loglog_slope(lengths, times):.2f} (1.0 = linear)")


if __name__ == "__main__":
    main()
