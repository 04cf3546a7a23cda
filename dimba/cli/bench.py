"""`dimba bench`: speed of a diffusion model (the default DIMBA, or any kind from a checkpoint) against the AR
baseline, on CPU here or on a GPU."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Literal

import torch

from dimba.cli.fit import model_from_configs
from dimba.config import config_path
from dimba.errors import ConfigError
from dimba.eval.bench import generation_grid, length_sweep, markdown, matmul_tflops, plot, training_throughput
from dimba.eval.timing import machine_description
from dimba.outputs import check_out_dir
from dimba.training.checkpoint import load_for_inference, usable_device


def bench_defaults(args) -> None:
    """Fill the grid's unset sizes by device (or the --quick grid) and check them."""
    gpu = args.device.startswith("cuda")
    if args.quick:  # a tiny grid where the user set none
        args.lengths, args.steps, args.batches = args.lengths or [32], args.steps or [2], args.batches or [1, 2]
        args.max_length, args.repeats, args.train_batch = args.max_length or 512, 1, 2
    args.lengths = args.lengths or ([128, 256, 512, 1024, 4096] if gpu else [128, 512, 1024])
    args.steps = args.steps or ([8, 16, 32, 64, 128, 256] if gpu else [8, 32, 128])
    args.batches = args.batches or ([1, 8, 32] if gpu else [1, 8])
    args.max_length = args.max_length or (16384 if gpu else 4096)
    for name in ("lengths", "steps", "batches"):
        if min(getattr(args, name)) < 1:
            raise ConfigError(f"--{name} must hold positive integers, got {getattr(args, name)}")
    for name in ("threads", "train_batch", "repeats", "max_length"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name} must be >= 1, got {value}")


def bench(ckpt_path: str | None = None, ar_ckpt_path: str | None = None, lengths: list[int] | None = None,
          steps: list[int] | None = None, batches: list[int] | None = None, max_length: int | None = None,
          train_batch: int = 8, repeats: int = 3, precision: Literal["fp32", "bf16"] = "fp32",
          device: str | None = None, threads: int | None = None, compile: bool = False,
          compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default", quick: bool = False,
          out_dir: Path = Path("runs/bench")) -> None:
    """time generation and training of a diffusion model against the AR baseline (bench.json, .md, .png)

    Models come from checkpoints, or (speed only) freshly initialised at the sizes of the shipped
    configs/base.yaml and configs/model/ar.yaml. Results are written after every measurement, so an interrupted
    run keeps what it measured.

    Args:
        ckpt_path: diffusion checkpoint (default: a fresh model of configs/base.yaml's size)
        ar_ckpt_path: AR checkpoint (default: a fresh model of configs/model/ar.yaml's size)
        lengths: generation lengths (default by device)
        steps: denoising step counts (default by device)
        batches: batch sizes (default by device)
        max_length: longest L of the sweep of one network forward against L (from 256, doubling)
        train_batch: batch of the training-throughput measurement
        repeats: timed repeats per cell (the median is reported)
        precision: fp32, or bf16 autocast
        device: cpu, cuda, ... (default: CUDA when available)
        threads: torch CPU threads (default: torch's); batch-1 decoding on a small CPU is often faster with 1
        compile: generate through torch.compile (both models; each cell compiles at its warm-up call)
        compile_mode: torch.compile's mode; reduce-overhead captures CUDA graphs (the fair batch-1 AR on a GPU)
        quick: a tiny grid where none is given, one repeat (a smoke test)
        out_dir: where bench.json, bench.md and bench.png go
    """
    args = SimpleNamespace(**{k: v for k, v in locals().items()})
    args.device = str(usable_device(device or ("cuda" if torch.cuda.is_available() else "cpu")))
    bench_defaults(args)
    check_out_dir(out_dir, ("bench.json", "bench.md", "bench.png"), "dimba bench")
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    # Fresh models get a context as long as the longest generation: a whole-sequence model writes no further.
    context = ("--data.seq_len", str(max(args.lengths + [128])))
    diffusion = load_for_inference(ckpt_path, args.device) if ckpt_path else \
        model_from_configs("--config", config_path("base.yaml"), *context).to(args.device).eval()
    ar = load_for_inference(ar_ckpt_path, args.device) if ar_ckpt_path else \
        model_from_configs("--config", config_path("base.yaml"), "--model", config_path("model/ar.yaml"),
                           *context).to(args.device).eval()
    models = [diffusion, ar]
    if compile:
        for model in models:
            model.compile_generation(compile_mode)
    print(f"# {machine_description(args.device)}", file=sys.stderr)
    print("# parameters: " + ", ".join(f"{m.short_name} {m.num_parameters():,}" for m in models), file=sys.stderr)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine_description(args.device), "precision": precision,
              "compiled": compile and compile_mode,
              "settings": {k: str(v) for k, v in vars(args).items()}, "training": {}, "generation": []}

    def save(*_):  # everything measured so far, after every measurement
        (out_dir / "bench.json").write_text(json.dumps(result, indent=2))
        (out_dir / "bench.md").write_text(markdown(result))

    peak = result["matmul_tflops"] = matmul_tflops(args.device)
    for m in models:
        t = result["training"][m.short_name] = training_throughput(m, args)
        t["mfu"] = t["tflops"] / peak if peak else None
        save()
    generation_grid(models, args, result["generation"], on_row=save)
    result["length_sweep"] = length_sweep(diffusion, args)
    save()
    plot(result, out_dir / "bench.png")
    print(markdown(result))
