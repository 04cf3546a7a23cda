"""`dimba bench`: speed of a diffusion model (DIMBA by default, any kind from a checkpoint) against the AR
baseline, on CPU here or on a GPU. Models come from checkpoints, or (speed only) freshly initialised at the
sizes of configs/base.yaml and configs/model/ar.yaml. Writes bench.json, bench.md and bench.png to --out_dir.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from dimba.errors import ConfigError
from dimba.eval.bench import (
    generation_grid,
    length_sweep,
    load_models,
    markdown,
    matmul_tflops,
    plot,
    training_throughput,
)
from dimba.eval.timing import machine_description
from dimba.training.checkpoint import usable_device


def csv_ints(s: str) -> list[int]:
    values = [int(v) for v in s.split(",") if v]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"need positive integers, got {s!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dimba bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt_path", help="diffusion checkpoint (default: fresh model of configs/base.yaml's size)")
    p.add_argument("--ar_ckpt_path", help="AR checkpoint (default: fresh model of configs/model/ar.yaml's size)")
    p.add_argument("--lengths", type=csv_ints, default=None, help="generation lengths (default by device)")
    p.add_argument("--steps", type=csv_ints, default=None, help="denoising step counts (default by device)")
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
    usable_device(args.device)  # a device this machine lacks: one error line before any model is built
    gpu = args.device.startswith("cuda")
    if args.quick:
        args.lengths, args.steps, args.batches = [32], [2], [1, 2]
        args.max_length, args.repeats, args.train_batch = 512, 1, 2
    args.lengths = args.lengths or ([128, 256, 512, 1024, 4096] if gpu else [128, 512, 1024])
    args.steps = args.steps or ([8, 16, 32, 64, 128, 256] if gpu else [8, 32, 128])
    args.batches = args.batches or ([1, 8, 32] if gpu else [1, 8])
    args.max_length = args.max_length or (16384 if gpu else 4096)
    for name in ("threads", "train_batch", "repeats", "max_length"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name} must be >= 1, got {value}")


def main(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    defaults(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    diffusion, ar = load_models(args)
    models = [diffusion, ar]
    if args.compile:
        for model in models:
            model.compile_generation()
    print(f"# {machine_description(args.device)}", file=sys.stderr)
    print("# parameters: " + ", ".join(f"{m.short_name} {m.num_parameters():,}" for m in models), file=sys.stderr)
    peak = matmul_tflops(args.device)
    training = {m.short_name: training_throughput(m, args) for m in models}
    for t in training.values():
        t["mfu"] = t["tflops"] / peak if peak else None
    result = {"machine": machine_description(args.device), "precision": args.precision, "compiled": args.compile,
              "matmul_tflops": peak, "training": training, "generation": generation_grid(models, args),
              "length_sweep": length_sweep(diffusion, args), "settings": {k: str(v) for k, v in vars(args).items()}}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "bench.json").write_text(json.dumps(result, indent=2))
    table = markdown(result)
    (args.out_dir / "bench.md").write_text(table)
    plot(result, args.out_dir / "bench.png")
    print(table)
