"""`dimba bench`: speed of DIMBA against the AR baseline, on CPU here or on a GPU.

- Generation: latency and throughput (tokens/s) over generation lengths x DIMBA steps x batch sizes,
  warm-up then the median of repeats, with peak memory (CUDA: max allocated; CPU: process peak RSS).
- Cost against sequence length: one denoiser forward at L = 256 .. max_length, with the log-log slope.
- Training throughput (tokens/s) of both models; on CUDA also MFU against the measured bf16 matmul rate.

Models come from checkpoints, or (speed only) freshly initialised at the sizes of configs/base.yaml and
configs/ar.yaml. Writes bench.json, bench.md and bench.png to --out_dir.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from functools import partial
from pathlib import Path

import torch
import yaml

from dimba.checkpoint import load_for_inference
from dimba.diffusion.generate import SamplingConfig
from dimba.errors import DimbaError
from dimba.eval.timing import loglog_slope, machine_description, median_seconds
from dimba.lit_ar import ARLM
from dimba.lit_module import DimbaLM

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def csv_ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dimba bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt_path", help="DIMBA checkpoint (default: fresh model of configs/base.yaml's size)")
    p.add_argument("--ar_ckpt_path", help="AR checkpoint (default: fresh model of configs/ar.yaml's size)")
    p.add_argument("--lengths", type=csv_ints, default=None, help="generation lengths (default by device)")
    p.add_argument("--steps", type=csv_ints, default=None, help="DIMBA step counts (default by device)")
    p.add_argument("--batches", type=csv_ints, default=None, help="batch sizes (default by device)")
    p.add_argument("--max_length", type=int, default=None, help="longest L of the scaling sweep")
    p.add_argument("--train_batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's). Batch-1 decoding on a small CPU is often faster with 1")
    p.add_argument("--compile", action="store_true",
                   help="generate through torch.compile (both models; each cell compiles at its warm-up call)")
    p.add_argument("--quick", action="store_true", help="a tiny grid (smoke test)")
    p.add_argument("--out_dir", type=Path, default=Path("runs/bench"))
    return p


def defaults(args) -> None:
    gpu = args.device.startswith("cuda")
    if args.quick:
        args.lengths, args.steps, args.batches = [32], [2], [1, 2]
        args.max_length, args.repeats, args.train_batch = 512, 1, 2
    args.lengths = args.lengths or ([128, 256, 512, 1024, 4096] if gpu else [128, 512, 1024])
    args.steps = args.steps or ([8, 16, 32, 64, 128, 256] if gpu else [8, 32, 128])
    args.batches = args.batches or ([1, 8, 32] if gpu else [1, 8])
    args.max_length = args.max_length or (16384 if gpu else 4096)


def config_model(cls, path: Path, vocab_size: int = 4096):
    init = yaml.safe_load(path.read_text())["model"]["init_args"]
    return cls(vocab_size=vocab_size, seq_len=128, **init)


def load_models(args) -> tuple[DimbaLM, ARLM]:
    dimba = load_for_inference(args.ckpt_path, args.device) if args.ckpt_path else \
        config_model(DimbaLM, CONFIGS / "base.yaml").to(args.device).eval()
    ar = load_for_inference(args.ar_ckpt_path, args.device) if args.ar_ckpt_path else \
        config_model(ARLM, CONFIGS / "ar.yaml").to(args.device).eval()
    return dimba, ar


def autocast(args):
    return torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16, enabled=args.precision == "bf16")


def peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def generation_grid(dimba: DimbaLM, ar: ARLM, args) -> list[dict]:
    rows = []
    for length in args.lengths:
        for batch in args.batches:
            prompts = [[] for _ in range(batch)]
            cells = [("AR", None, partial(ar.generate, prompts, length, 1.0, 1.0, 0))]
            cells += [("DIMBA", s, partial(dimba.generate, prompts, length, SamplingConfig(steps=s, seed=0)))
                      for s in args.steps]
            for name, steps, fn in cells:
                if args.compile:
                    # Fresh graphs per cell: the shapes of earlier cells must not use up the recompile
                    # limit and send this one back to eager.
                    torch.compiler.reset()
                if args.device.startswith("cuda"):
                    torch.cuda.reset_peak_memory_stats()
                with torch.no_grad(), autocast(args):
                    seconds = median_seconds(fn, args.device, warmup=1, repeats=args.repeats)
                rows.append({"model": name, "steps": steps, "length": length, "batch": batch, "latency_s": seconds,
                             "tokens_per_s": batch * length / seconds, "peak_mem_mb": peak_memory_mb(args.device)})
                print(f"  {name:5s} steps {steps or '-':>4} L {length:5d} batch {batch:3d}: {seconds * 1e3:9.1f} ms, "
                      f"{batch * length / seconds:10,.0f} tok/s", file=sys.stderr)
    return rows


def length_sweep(dimba: DimbaLM, args) -> dict:
    lengths, times = [], []
    length = 256
    d = dimba.hparams.d_embed
    while length <= args.max_length:
        x = torch.randn(1, length, d, device=args.device)
        t = torch.full((1,), 0.5, device=args.device)
        tokens = torch.zeros(1, length, dtype=torch.long, device=args.device)
        mask = torch.zeros(1, length, dtype=torch.bool, device=args.device)
        with torch.no_grad(), autocast(args):
            seconds = median_seconds(partial(dimba.net, x, t, tokens, mask), args.device, warmup=1,
                                     repeats=args.repeats)
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


def training_throughput(model, args, seq_len: int = 128) -> dict:
    model.train()
    model.log = model.log_dict = lambda *a, **k: None  # no trainer attached
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = torch.randint(0, model.hparams.vocab_size, (args.train_batch, seq_len), device=args.device)

    def step():
        with autocast(args):
            loss = model.training_step(batch, 0)
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


def main(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    defaults(args)
    if args.threads is not None:
        if args.threads < 1:
            raise DimbaError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dimba, ar = load_models(args)
    if args.compile:
        dimba.compile_generation()
        ar.compile_generation()
    print(f"# {machine_description(args.device)}", file=sys.stderr)
    print(f"# parameters: DIMBA {dimba.num_parameters():,}, AR {ar.num_parameters():,}", file=sys.stderr)
    peak = matmul_tflops(args.device)
    training = {"DIMBA": training_throughput(dimba, args), "AR": training_throughput(ar, args)}
    for t in training.values():
        t["mfu"] = t["tflops"] / peak if peak else None
    result = {"machine": machine_description(args.device), "precision": args.precision, "compiled": args.compile,
              "matmul_tflops": peak, "training": training, "generation": generation_grid(dimba, ar, args),
              "length_sweep": length_sweep(dimba, args), "settings": {k: str(v) for k, v in vars(args).items()}}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "bench.json").write_text(json.dumps(result, indent=2))
    table = markdown(result)
    (args.out_dir / "bench.md").write_text(table)
    plot(result, args.out_dir / "bench.png")
    print(table)
