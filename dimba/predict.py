"""`dimba predict`: complete prompts with a trained checkpoint (DIMBA, or the AR baseline, which ignores the
diffusion options); nothing but the checkpoint is needed.

Sampling options are flags, independent of how the model was trained. With --output, one JSON object per
prompt (prompt, completion, steps, seconds) is appended and flushed as it goes; re-running with the same
output skips the prompts already written (--overwrite starts afresh).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from dimba.checkpoint import load_for_inference
from dimba.diffusion.generate import SamplingConfig
from dimba.diffusion.samplers import SAMPLERS
from dimba.errors import DimbaError
from dimba.lit_ar import ARLM


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dimba predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt_path", required=True, help="checkpoint written by `dimba fit` (e.g. .../last.ckpt)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", help="one prompt (default: empty, unconditional generation)")
    src.add_argument("--prompts", type=Path, help="a text file with one prompt per line")
    p.add_argument("--output", type=Path, help="write JSON lines here instead of printing")
    p.add_argument("--overwrite", action="store_true", help="replace --output instead of resuming it")
    p.add_argument("--length", type=int, default=None, help="new tokens per prompt (default: the model's "
                   "seq_len minus the prompt)")
    p.add_argument("--sampler", choices=SAMPLERS, default="ddim")
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--eta", type=float, default=0.0)
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (1 = off)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top_p", type=float, default=1.0)
    p.add_argument("--x0_temperature", type=float, default=1.0,
                   help="softmax temperature of the x0 estimate while denoising (< 1: likelier, less diverse text)")
    p.add_argument("--clamp_from", type=float, default=1.0,
                   help="fraction of steps after which x0 snaps to the nearest embedding (1 = never)")
    p.add_argument("--no_self_condition", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--show_steps", action="store_true", help="print the decoded text after every step")
    return p


def read_prompts(args) -> list[str]:
    if args.prompts is None:
        return [args.prompt or ""]
    if not args.prompts.is_file():
        raise DimbaError(f"prompts file not found: {args.prompts}")
    raw = args.prompts.read_bytes()
    text = raw.decode("utf-8", errors="replace")
    if "\ufffd" in text and "\ufffd" not in raw.decode("utf-8", errors="ignore"):
        print(f"warning: {args.prompts} is not valid UTF-8; undecodable bytes replaced with U+FFFD", file=sys.stderr)
    prompts = text.splitlines()
    if not prompts:
        raise DimbaError(f"prompts file {args.prompts} is empty")
    return prompts


def completed_prompts(output: Path) -> list[str]:
    """The prompts of the complete, valid JSON lines in output (a torn last line is dropped)."""
    if not output.exists():
        return []
    done, lines = [], output.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break
        if not line.endswith("\n") or not isinstance(row, dict) or "prompt" not in row:
            break
        done.append(row["prompt"])
    if len(done) < len(lines):  # drop a torn tail so that appending keeps the file valid JSONL
        output.write_text("".join(lines[:len(done)]), encoding="utf-8")
    return done


def open_output(args, prompts: list[str]):
    """(file handle or None, index of the first prompt still to do). An existing output is resumed only if
    its lines answer the same leading prompts; otherwise it is left untouched and the run refused."""
    if args.output is None:
        return None, 0
    try:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        if args.overwrite and args.output.exists():
            args.output.unlink()
        done = completed_prompts(args.output)
        if done != prompts[:len(done)]:
            raise DimbaError(f"{args.output} holds results for other prompts; pass --overwrite to replace it, "
                             "or choose another --output")
        handle = open(args.output, "a", encoding="utf-8")
    except OSError as err:
        raise DimbaError(f"cannot write to {args.output}: {err.strerror}") from None
    if done:
        print(f"{args.output}: {len(done)} of {len(prompts)} prompts already done, continuing", file=sys.stderr)
    return handle, len(done)


def run(args) -> None:
    prompts = read_prompts(args)
    cfg = SamplingConfig(sampler=args.sampler, steps=args.steps, eta=args.eta, guidance=args.guidance,
                         self_condition=not args.no_self_condition, clamp_from=args.clamp_from,
                         temperature=args.temperature, top_p=args.top_p, x0_temperature=args.x0_temperature,
                         seed=args.seed)
    model = load_for_inference(args.ckpt_path, args.device)
    tok, context = model.tokenizer, model.hparams.seq_len
    encoded = [tok.encode(p) for p in prompts]
    for i, ids in enumerate(encoded):
        need = len(ids) + (args.length or 1)
        if need > context:
            extra = f" + --length {args.length}" if args.length else ""
            raise DimbaError(f"prompt {i + 1} is {len(ids)} tokens{extra}, more than the model's context of "
                             f"{context} tokens")
    handle, start = open_output(args, prompts)
    try:
        bar = tqdm(total=len(prompts) - start, desc="prompts", disable=len(prompts) - start <= 1, file=sys.stderr)
        for lo in range(start, len(prompts), args.batch_size):
            idx = list(range(lo, min(lo + args.batch_size, len(prompts))))
            batch = [encoded[i] for i in idx]
            length = args.length or context - max(len(b) for b in batch)
            began = time.perf_counter()
            if isinstance(model, ARLM):
                completions, trajectory = model.generate(batch, length, cfg.temperature, cfg.top_p, cfg.seed), []
            else:
                completions, trajectory = model.generate(batch, length, cfg, record_trajectory=args.show_steps)
            seconds = (time.perf_counter() - began) / len(idx)
            for step, tokens in enumerate(trajectory):
                print(f"[step {step + 1}/{cfg.steps}] {tok.decode(tokens[0, len(batch[0]):])!r}", file=sys.stderr)
            for i, ids in zip(idx, completions, strict=True):
                completion = tok.decode(ids, stop_at_eos=True)
                if handle is None:
                    print(prompts[i] + completion)
                else:
                    handle.write(json.dumps({"prompt": prompts[i], "completion": completion, "steps": cfg.steps,
                                             "seconds": round(seconds, 4)}, ensure_ascii=False) + "\n")
                    handle.flush()
            bar.update(len(idx))
        bar.close()
    finally:
        if handle is not None:
            handle.close()


def main(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except ValueError as err:  # invalid sampling settings (steps, top_p, eta, ...)
        raise DimbaError(str(err)) from None
