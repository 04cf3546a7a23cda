"""`dimba predict`: complete prompts with a trained checkpoint or export folder (any model kind); nothing but
the checkpoint is needed.

Sampling options are flags, independent of how the model was trained; a model refuses an option it cannot
honour (the AR baseline has no denoising steps, for one). With --output, one JSON object per prompt (prompt,
completion, steps, seconds) is appended and flushed as it goes; re-running with the same output skips the
prompts already written (--overwrite starts afresh).

--infill: each prompt is a template with gaps `{{N}}` (N tokens to write; a literal `{{` is `\\{{`), e.g.
    dimba predict --ckpt_path CKPT --infill --prompt "The king {{8}} the queen."
A diffusion model fills every gap knowing the text on both sides; the AR baseline sees only what is left of
a gap (an AR model trained with fill-in-the-middle, `fim_rate`, sees the text up to the next gap too). JSON
rows then hold the template, the filled text and each gap's text.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from dimba.data.infill import parse_template
from dimba.errors import ConfigError, DimbaError
from dimba.sampling import add_sampling_arguments, sampling_config_from_args
from dimba.training.checkpoint import load_for_inference


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dimba predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt_path", required=True, help="checkpoint written by `dimba fit` (e.g. .../last.ckpt) or "
                                                      "a folder written by `dimba export`")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", help="one prompt (default: empty, unconditional generation)")
    src.add_argument("--prompts", type=Path, help="a text file with one prompt per line")
    p.add_argument("--output", type=Path, help="write JSON lines here instead of printing")
    p.add_argument("--overwrite", action="store_true", help="replace --output instead of resuming it")
    p.add_argument("--length", type=int, default=None, help="new tokens per prompt (default: the model's "
                   "seq_len minus the prompt)")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--show_steps", action="store_true", help="print the decoded text after every step")
    p.add_argument("--infill", action="store_true", help="prompts are templates with gaps {{N}} to fill")
    add_sampling_arguments(p)
    return p


def split_lines(text: str) -> list[str]:
    """Lines split at "\\n" only (a "\\r" before it is dropped): str.splitlines would also split at U+2028,
    U+2029, U+0085, \\f and \\v, which are ordinary characters of a prompt or a completion."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def read_prompts(args) -> list[str]:
    if args.prompts is None:
        return [args.prompt or ""]
    if not args.prompts.is_file():
        raise DimbaError(f"prompts file not found (or not a file): {args.prompts}")
    raw = args.prompts.read_bytes()
    text = raw.decode("utf-8", errors="replace")
    if "\ufffd" in text and "\ufffd" not in raw.decode("utf-8", errors="ignore"):
        print(f"warning: {args.prompts} is not valid UTF-8; undecodable bytes replaced with U+FFFD", file=sys.stderr)
    prompts = split_lines(text)
    if not prompts:
        raise DimbaError(f"prompts file {args.prompts} is empty")
    return prompts


def completed_prompts(output: Path) -> list[str]:
    """The prompts of the complete, valid JSON lines in output (a torn last line is dropped). JSON escapes
    "\\n" inside strings, so rows are split at "\\n" only."""
    if not output.is_file():
        return []
    text = output.read_text(encoding="utf-8", errors="replace")
    lines = [line + "\n" for line in text.split("\n")[:-1]]
    tail = text.rsplit("\n", 1)[-1] if "\n" in text else text
    done = []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break
        if not isinstance(row, dict) or "prompt" not in row:
            break
        done.append(row["prompt"])
    if len(done) < len(lines) or tail:  # drop a torn tail so that appending keeps the file valid JSONL
        output.write_text("".join(lines[:len(done)]), encoding="utf-8")
    return done


def open_output(args, prompts: list[str]):
    """(file handle or None, index of the first prompt still to do). An existing output is resumed only if
    its lines answer the same leading prompts; otherwise it is left untouched and the run refused. Something
    that is not a regular file (a device, a pipe) is written to, never read or removed."""
    if args.output is None:
        return None, 0
    try:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        if args.overwrite and args.output.is_file():
            args.output.unlink()
        done = completed_prompts(args.output)
        if done != prompts[:len(done)]:
            raise DimbaError(f"{args.output} holds results for other prompts; pass --overwrite to replace it, "
                             "or choose another --output")
        handle = open(args.output, "a", encoding="utf-8")
    except OSError as err:
        raise DimbaError(f"cannot write to {args.output}: {err.strerror or err}") from None
    if done:
        print(f"{args.output}: {len(done)} of {len(prompts)} prompts already done, continuing", file=sys.stderr)
    return handle, len(done)


def decode_partial(tok, ids: list[int]) -> str:
    """Text of a partial completion, with "_" for positions the model has not decided yet (-1)."""
    out, run = [], []
    for i in ids:
        if i < 0:
            out.append(tok.decode(run) + "_")
            run = []
        else:
            run.append(i)
    return "".join(out) + tok.decode(run)


def write_row(handle, output: Path, row: dict) -> None:
    try:
        handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        handle.flush()
    except OSError as err:
        raise DimbaError(f"cannot write to {output}: {err.strerror or err}") from None


def encode_inputs(args, tok, prompts: list[str], context: int) -> tuple[list[list[int]], list[list[bool]], list]:
    """(token ids, given masks, templates or None) of every prompt: a prompt followed by --length new tokens
    (default: the rest of the context), or an infilling template."""
    sequences, given, templates = [], [], []
    for i, text in enumerate(prompts):
        if args.infill:
            try:
                template = parse_template(text)
            except DimbaError as err:
                raise DimbaError(f"prompt {i + 1}: {err}") from None
            ids, mask = template.encode(tok.encode)
            what = f"prompt {i + 1} (template)"
        else:
            template, prompt = None, tok.encode(text)
            length = args.length or context - len(prompt)
            ids, mask = prompt + [0] * max(length, 0), [True] * len(prompt) + [False] * max(length, 0)
            what = f"prompt {i + 1}"
            if length < 1 or len(ids) > context:
                extra = f" + --length {args.length}" if args.length else ""
                raise DimbaError(f"{what} is {len(prompt)} tokens{extra}, more than the model's context of "
                                 f"{context} tokens")
        if len(ids) > context:
            raise DimbaError(f"{what} is {len(ids)} tokens with its gaps, more than the model's context of "
                             f"{context} tokens")
        sequences.append(ids)
        given.append(mask)
        templates.append(template)
    return sequences, given, templates


def run(args) -> None:
    if args.length is not None and args.length < 1:
        raise ConfigError(f"--length must be >= 1, got {args.length}")
    if args.infill and args.length is not None:
        raise ConfigError("--length does not apply to --infill: each gap {{N}} says how many tokens to write")
    if args.batch_size < 1:
        raise ConfigError(f"--batch_size must be >= 1, got {args.batch_size}")
    cfg = sampling_config_from_args(args)
    prompts = read_prompts(args)
    model = load_for_inference(args.ckpt_path, args.device)
    model.check_sampling(cfg)
    tok = model.tokenizer
    sequences, given, templates = encode_inputs(args, tok, prompts, model.seq_len)
    handle, start = open_output(args, prompts)
    try:
        bar = tqdm(total=len(prompts) - start, desc="prompts", disable=len(prompts) - start <= 1, file=sys.stderr)
        for lo in range(start, len(prompts), args.batch_size):
            idx = list(range(lo, min(lo + args.batch_size, len(prompts))))
            show = None
            if args.show_steps:
                def show(step, rows, guess):
                    if rows[0] == 0:  # the batch's first example
                        print(f"[step {step + 1}] {decode_partial(tok, guess[0].tolist())!r}", file=sys.stderr)
            began = time.perf_counter()
            filled = model.fill([sequences[i] for i in idx], [given[i] for i in idx], cfg, on_step=show,
                                example_ids=idx)
            seconds = (time.perf_counter() - began) / len(idx)
            for i, ids in zip(idx, filled, strict=True):
                if templates[i] is not None:
                    fills = templates[i].fills(ids, given[i], tok.decode)
                    text = "".join(piece + (fills[k] if k < len(fills) else "")
                                   for k, piece in enumerate(templates[i].pieces))
                    row = {"prompt": prompts[i], "text": text, "fills": fills}
                else:
                    completion = tok.decode([t for t, k in zip(ids, given[i], strict=True) if not k],
                                            stop_at_eos=True)
                    text, row = prompts[i] + completion, {"prompt": prompts[i], "completion": completion}
                if handle is None:
                    print(text)
                else:
                    write_row(handle, args.output, {**row, "steps": cfg.steps, "seconds": round(seconds, 4)})
            bar.update(len(idx))
        bar.close()
    finally:
        if handle is not None:
            try:
                handle.close()
            except OSError:
                pass  # the write error was already reported


def main(argv: list[str]) -> None:
    run(build_parser().parse_args(argv))
