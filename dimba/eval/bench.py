"""Speed of a diffusion model against the AR baseline (`dimba bench`), on CPU or GPU.

- Generation: latency and throughput (tokens/s) over generation lengths x denoising steps x batch sizes,
  warm-up then the median of repeats, with peak memory (CUDA: max allocated; CPU: process peak RSS).
- Cost against sequence length: one network forward at L = 256 .. max_length, with the log-log slope.
- Training throughput (tokens/s) of both models; on CUDA also MFU against the measured bf16 matmul rate.
"""

from __future__ import annotations

import inspect
import resource
import sys
from functools import partial
from pathlib import Path

import torch
import yaml

from dimba.eval.timing import loglog_slope, median_seconds
from dimba.sampling import SamplingConfig
from dimba.training.base import LanguageModelBase
from dimba.training.checkpoint import load_for_inference, model_class

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def config_model(*paths: Path, vocab_size: int = 4096, seq_len: int = 128) -> LanguageModelBase:
    """A freshly initialised model of the size the config files give (later files override earlier ones)."""
    model, init = None, {}
    for path in paths:
        cfg = yaml.safe_load(path.read_text())
        cfg = cfg.get("model", cfg)
        if isinstance(cfg, str):  # `model: model/hybrid.yaml`: a file relative to the config, as jsonargparse reads it
            cfg = yaml.safe_load((path.parent / cfg).read_text())
        if cfg.get("class_path", model) != model:  # another kind: keep what it accepts, as LightningCLI does
            model = cfg["class_path"]
            accepted = inspect.signature(model_class(model).__init__).parameters
            init = {k: v for k, v in init.items() if k in accepted}
        for key, value in cfg.get("init_args", {}).items():
            init[key] = {**init.get(key, {}), **value} if isinstance(value, dict) else value
    return model_class(model)(vocab_size=vocab_size, seq_len=seq_len, **init)


def load_models(args) -> tuple[LanguageModelBase, LanguageModelBase]:
    diffusion = load_for_inference(args.ckpt_path, args.device) if args.ckpt_path else \
        config_model(CONFIGS / "base.yaml").to(args.device).eval()
    ar = load_for_inference(args.ar_ckpt_path, args.device) if args.ar_ckpt_path else \
        config_model(CONFIGS / "base.yaml", CONFIGS / "model" / "ar.yaml").to(args.device).eval()
    return diffusion, ar


def autocast(args):
    return torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16, enabled=args.precision == "bf16")


def peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def generation_cells(model: LanguageModelBase, args) -> list[tuple[int | None, SamplingConfig]]:
    """(steps, config) per benchmark cell: every step count for a model that has steps, else one cell."""
    if "steps" in model.sampling_options:
        return [(steps, SamplingConfig(steps=steps, seed=0)) for steps in args.steps]
    return [(None, SamplingConfig(seed=0))]


def generation_grid(models: list[LanguageModelBase], args) -> list[dict]:
    rows = []
    for length in args.lengths:
        for batch in args.batches:
            prompts = [[] for _ in range(batch)]
            for model in models:
                for steps, cfg in generation_cells(model, args):
                    if args.compile:
                        # Fresh graphs per cell: the shapes of earlier cells must not use up the recompile
                        # limit and send this one back to eager.
                        torch.compiler.reset()
                    if args.device.startswith("cuda"):
                        torch.cuda.reset_peak_memory_stats()
                    with torch.no_grad(), autocast(args):
                        seconds = median_seconds(partial(model.generate, prompts, length, cfg), args.device,
                                                 warmup=1, repeats=args.repeats)
                    name = model.short_name
                    rows.append({"model": name, "steps": steps, "length": length, "batch": batch,
                                 "latency_s": seconds, "tokens_per_s": batch * length / seconds,
                                 "peak_mem_mb": peak_memory_mb(args.device)})
                    print(f"  {name:5s} steps {steps or '-':>4} L {length:5d} batch {batch:3d}: "
                          f"{seconds * 1e3:9.1f} ms, {batch * length / seconds:10,.0f} tok/s", file=sys.stderr)
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
    return {"lengths": lengths, "seconds": times, "loglog_slope": loglog_slope(lengths, times)}


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
    compiled = "torch.compile" if result.get("compiled") else "eager"
    lines = [f"Machine: {result['machine']}; precision {result['precision']}; generation {compiled} "
             "(training and the length sweep eager)", "",
             "| model | params | train tok/s | FLOPs/token | MFU |", "|---|---|---|---|---|"]
    for name, t in result["training"].items():
        mfu = f"{t['mfu']:.1%}" if t.get("mfu") is not None else "n/a (CPU)"
        lines.append(f"| {name} | {t['parameters']:,} | {t['tokens_per_s']:,.0f} | {t['flops_per_token']:.3g} "
                     f"| {mfu} |")
    lines += ["", "| model | steps | length | batch | latency (ms) | tokens/s | peak mem (MB) |",
              "|---|---|---|---|---|---|---|"]
    for r in result["generation"]:
        lines.append(f"| {r['model']} | {r['steps'] or '-'} | {r['length']} | {r['batch']} "
                     f"| {r['latency_s'] * 1e3:.1f} | {r['tokens_per_s']:,.0f} | {r['peak_mem_mb']:.0f} |")
    sweep = result["length_sweep"]
    lines += ["", "| L (one denoiser forward, batch 1) | ms |", "|---|---|"]
    lines += [f"| {n} | {s * 1e3:.1f} |" for n, s in zip(sweep["lengths"], sweep["seconds"], strict=True)]
    lines += ["", f"log-log slope of time against L: {sweep['loglog_slope']:.2f} (1.0 = linear)"]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    rows = [r for r in result["generation"] if r["batch"] == 1]
    for key in sorted({(r["model"], r["steps"] or 0) for r in rows}):
        pts = sorted((r["length"], r["latency_s"]) for r in rows if (r["model"], r["steps"] or 0) == key)
        ax1.plot(*zip(*pts, strict=True), "o-", label=key[0] + (f" {key[1]} steps" if key[1] else ""))
    ax1.set(xscale="log", yscale="log", xlabel="generated tokens", ylabel="latency at batch 1 (s)")
    ax1.legend(fontsize=8)
    sweep = result["length_sweep"]
    ax2.plot(sweep["lengths"], sweep["seconds"], "o-")
    ax2.set(xscale="log", yscale="log", xlabel="L", ylabel="one denoiser forward (s)",
            title=f"slope {sweep['loglog_slope']:.2f}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
