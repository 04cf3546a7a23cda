"""Speed of a diffusion model against the AR baseline (`dimba bench`), on CPU or GPU.

- Generation: latency and throughput (tokens/s) over generation lengths x denoising steps x batch sizes,
  warm-up then the median of repeats, with each cell's peak memory (CUDA: max allocated; CPU: peak RSS, reset
  before the cell where Linux allows it).
- Cost against sequence length: one network forward at L = 256 .. max_length, with the log-log slope.
- Training throughput (tokens/s) of both models; on CUDA also MFU against the measured bf16 matmul rate.
"""

from __future__ import annotations

import resource
import sys
from functools import partial
from pathlib import Path

import torch

from dimba.eval.timing import loglog_slope, median_seconds
from dimba.sampling import SamplingConfig
from dimba.training.base import LanguageModelBase


def autocast(args):
    return torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16, enabled=args.precision == "bf16")


def reset_peak_memory(device: str) -> None:
    """Start a new peak: CUDA's allocator statistics, or the process's peak RSS on Linux (writing 5 to
    /proc/self/clear_refs resets VmHWM), so that each benchmark cell reports its own peak."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # elsewhere the peak is the process's since its start


def peak_memory_mb(device: str) -> float:
    """CUDA: the allocator's peak since the last reset; CPU: the process's peak RSS since the last reset (VmHWM),
    or since its start where that cannot be reset."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        status = Path("/proc/self/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024
    except (OSError, StopIteration, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def generation_cells(model: LanguageModelBase, args) -> list[tuple[int | None, SamplingConfig]]:
    """(steps, config) per benchmark cell: every step count for a model that has steps, else one cell."""
    # Every cell writes the full length: a block model would stop at its end-of-sequence token.
    full = {"stop_at_eos": False} if "stop_at_eos" in model.sampling_options else {}
    if "steps" in model.sampling_options:
        return [(steps, SamplingConfig(steps=steps, seed=0, **full)) for steps in args.steps]
    return [(None, SamplingConfig(seed=0))]


def generation_grid(models: list[LanguageModelBase], args, rows: list[dict], on_row=None) -> list[dict]:
    """Latency and throughput of every model at every length x batch x step count, appended to `rows` (and
    reported to on_row(rows) after each cell, so that an interrupted run keeps what it measured)."""
    for length in args.lengths:
        for batch in args.batches:
            prompts = [[] for _ in range(batch)]
            for model in models:
                for steps, cfg in generation_cells(model, args):
                    if args.compile:
                        # Fresh graphs per cell: the shapes of earlier cells must not use up the recompile
                        # limit and send this one back to eager.
                        torch.compiler.reset()
                    reset_peak_memory(args.device)
                    with torch.no_grad(), autocast(args):
                        seconds = median_seconds(partial(model.generate, prompts, length, cfg), args.device,
                                                 warmup=1, repeats=args.repeats)
                    name = model.short_name
                    rows.append({"model": name, "steps": steps, "length": length, "batch": batch,
                                 "latency_s": seconds, "tokens_per_s": batch * length / seconds,
                                 "peak_mem_mb": peak_memory_mb(args.device)})
                    print(f"  {name:5s} steps {steps or '-':>4} L {length:5d} batch {batch:3d}: "
                          f"{seconds * 1e3:9.1f} ms, {batch * length / seconds:10,.0f} tok/s", file=sys.stderr)
                    if on_row is not None:
                        on_row(rows)
    return rows


def length_sweep(model: LanguageModelBase, args) -> dict:
    """One full-sequence network forward (batch 1) at L = 256, 512, .. max_length."""
    lengths, times = [], []
    length = 256
    while length <= args.max_length:
        with torch.no_grad(), autocast(args):
            seconds = median_seconds(model.forward_at_length(length), args.device, warmup=1, repeats=args.repeats)
        lengths.append(length)
        times.append(seconds)
        length *= 2
    return {"lengths": lengths, "seconds": times,
            "loglog_slope": loglog_slope(lengths, times)}


def matmul_tflops(device: str) -> float | None:
    """Measured bf16 matmul rate (TFLOP/s) on CUDA; None on CPU."""
    if not device.startswith("cuda"):
        return None
    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    return 2 * n**3 / median_seconds(lambda: a @ b, device, warmup=3, repeats=10) / 1e12


def training_throughput(model: LanguageModelBase, args, seq_len: int = 128) -> dict:
    """Optimizer steps of the model's own training loss (no trainer, no logging) per second, as tokens/s."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = torch.randint(0, model.vocab_size, (args.train_batch, seq_len), device=args.device)

    def step():
        with autocast(args):
            loss = model.loss(batch).total
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    seconds = median_seconds(step, args.device, warmup=2, repeats=max(3, args.repeats))
    model.eval()
    tokens_per_s = args.train_batch * seq_len / seconds
    return {"tokens_per_s": tokens_per_s, "flops_per_token": model.flops_per_token,
            "tflops": tokens_per_s * model.flops_per_token / 1e12, "parameters": model.num_parameters()}


def markdown(result: dict) -> str:
    mode = result.get("compiled")
    compiled = "eager" if not mode else "torch.compile" + ("" if mode in (True, "default") else f" ({mode})")
    lines = [f"Machine: {result['machine']}; precision {result['precision']}; generation {compiled} "
             "(training and the length sweep eager)", "",
             "| model | params | train tok/s | FLOPs/token | MFU |", "|---|---|---|---|---|"]
    for name, t in result.get("training", {}).items():
        mfu = f"{t['mfu']:.1%}" if t.get("mfu") is not None else "n/a (CPU)"
        lines.append(f"| {name} | {t['parameters']:,} | {t['tokens_per_s']:,.0f} | {t['flops_per_token']:.3g} "
                     f"| {mfu} |")
    lines += ["", "| model | steps | length | batch | latency (ms) | tokens/s | peak mem (MB) |",
              "|---|---|---|---|---|---|---|"]
    for r in result.get("generation", []):
        lines.append(f"| {r['model']} | {r['steps'] or '-'} | {r['length']} | {r['batch']} "
                     f"| {r['latency_s'] * 1e3:.1f} | {r['tokens_per_s']:,.0f} | {r['peak_mem_mb']:.0f} |")
    sweep = result.get("length_sweep")
    if sweep:
        lines += ["", "| L (one denoiser forward, batch 1) | ms |", "|---|---|"]
        lines += [f"| {n} | {s * 1e3:.1f} |" for n, s in zip(sweep["lengths"], sweep["seconds"], strict=True)]
        if sweep["loglog_slope"] is not None:
            lines += ["", f"log-log slope of time against L: {sweep['loglog_slope']:.2f} (1.0 = linear)"]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    rows = [r for r in result.get("generation", []) if r["batch"] == 1]
    for key in sorted({(r["model"], r["steps"] or 0) for r in rows}):
        pts = sorted((r["length"], r["latency_s"]) for r in rows if (r["model"], r["steps"] or 0) == key)
        ax1.plot(*zip(*pts, strict=True), "o-", label=key[0] + (f" {key[1]} steps" if key[1] else ""))
    ax1.set(xscale="log", yscale="log", xlabel="generated tokens", ylabel="latency at batch 1 (s)")
    ax1.legend(fontsize=8)
    sweep = result.get("length_sweep") or {"lengths": [], "seconds": [], "loglog_slope": None}
    ax2.plot(sweep["lengths"], sweep["seconds"], "o-")
    slope = sweep["loglog_slope"]
    ax2.set(xscale="log", yscale="log", xlabel="L", ylabel="one denoiser forward (s)",
            title="" if slope is None else f"slope {slope:.2f}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
