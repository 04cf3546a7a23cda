"""`dimba predict`: complete prompts with a trained checkpoint or export folder (any model kind); nothing but the
checkpoint is needed.

Sampling options are the `--sampling.*` flags (`SamplingConfig`), independent of how the model was trained; a
model refuses an option it cannot honour (the AR baseline has no denoising steps, for one). With --output, one
JSON object per prompt (prompt, completion, steps, seconds) is appended and flushed as it goes; re-running with
the same output skips the prompts already written (`dimba.cli.jsonl_output`: a file it did not write is never
overwritten without --overwrite).

--infill: each prompt is a template with gaps `{{N}}` (N tokens to write; a literal `{{` is `\\{{`), e.g.
    dimba predict --ckpt_path CKPT --infill true --prompt "The king {{8}} the queen."
A diffusion model fills every gap knowing the text on both sides; the AR baseline sees only what is left of
a gap (an AR model trained with fill-in-the-middle, `fim_rate`, sees the text up to the next gap too). JSON
rows then hold the template, the filled text and each gap's text.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from tqdm import tqdm

from dimba.cli.jsonl_output import JsonlOutput, split_lines
from dimba.data.infill import parse_template
from dimba.errors import ConfigError, DimbaError
from dimba.sampling import SamplingConfig
from dimba.training.checkpoint import load_for_inference


def read_prompts(prompt: str | None, prompts: Path | None) -> list[str]:
    if prompts is None:
        return [prompt or ""]
    if not prompts.is_file():
        raise DimbaError(f"prompts file not found (or not a file): {prompts}")
    raw = prompts.read_bytes()
    text = raw.decode("utf-8", errors="replace")
    if "\ufffd" in text and "\ufffd" not in raw.decode("utf-8", errors="ignore"):
        print(f"warning: {prompts} is not valid UTF-8; undecodable bytes replaced with U+FFFD", file=sys.stderr)
    lines = split_lines(text)
    if not lines:
        raise DimbaError(f"prompts file {prompts} is empty")
    return lines


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


def encode_inputs(tok, prompts: list[str], context: int, limit: int, length: int | None, infill: bool
                  ) -> tuple[list[list[int]], list[list[bool]], list]:
    """(token ids, given masks, templates or None) of every prompt: a prompt followed by `length` new tokens
    (default: the rest of the training context), or an infilling template; checked against `limit` (what the model
    generates at most: its context, or more for a block model) before anything the size of a gap is allocated."""
    sequences, given, templates = [], [], []
    what_limit = f"the model's context of {limit} tokens" if limit == context else f"the model's limit of {limit:,}"
    for i, text in enumerate(prompts):
        if infill:
            try:
                template = parse_template(text, max_tokens=limit)
            except DimbaError as err:
                raise DimbaError(f"prompt {i + 1}: {err}") from None
            ids, mask = template.encode(tok.encode)
            what = f"prompt {i + 1} (template)"
        else:
            template, prompt = None, tok.encode(text)
            new = length or context - len(prompt)
            ids, mask = prompt + [0] * max(new, 0), [True] * len(prompt) + [False] * max(new, 0)
            what = f"prompt {i + 1}"
            if new < 1 or len(ids) > limit:
                extra = f" + --length {length}" if length else ""
                raise DimbaError(f"{what} is {len(prompt)} tokens{extra}, more than {what_limit}")
        if len(ids) > limit:
            raise DimbaError(f"{what} is {len(ids)} tokens with its gaps, more than {what_limit}")
        sequences.append(ids)
        given.append(mask)
        templates.append(template)
    return sequences, given, templates


class Stream:
    """Prints one prompt's completion as the model commits it, left to right (a block model's blocks, the AR
    model's tokens): the prompt at once, then each newly decided stretch, then the rest at the end."""

    def __init__(self, tok, prompt: str, n_prompt_tokens: int):
        self.tok, self.prompt, self.start, self.printed = tok, prompt, n_prompt_tokens, ""
        print(prompt, end="", flush=True)

    def commit(self, rows: list[int], tokens) -> None:
        new = tokens[0, self.start:].tolist()
        decided = new[:new.index(-1)] if -1 in new else new
        # A multi-byte character whose last byte is still to come decodes as U+FFFD: wait for it.
        text = self.tok.decode(decided, stop_at_eos=True).rstrip("\ufffd")
        if text.startswith(self.printed) and len(text) > len(self.printed):
            print(text[len(self.printed):], end="", flush=True)
            self.printed = text

    def finish(self, completion: str) -> None:
        """The whole completion, at the end: what was not printed yet."""
        print(completion[len(self.printed):] if completion.startswith(self.printed) else "\n" + completion)


def result_row(tok, prompt: str, ids: list[int], given: list[bool], template) -> tuple[str, dict]:
    """(the text to print, the JSON row) of one filled sequence."""
    if template is not None:
        fills = template.fills(ids, given, tok.decode)
        text = "".join(piece + (fills[k] if k < len(fills) else "") for k, piece in enumerate(template.pieces))
        return text, {"prompt": prompt, "text": text, "fills": fills}
    completion = tok.decode([t for t, k in zip(ids, given, strict=True) if not k], stop_at_eos=True)
    return prompt + completion, {"prompt": prompt, "completion": completion}


def predict(ckpt_path: str, prompt: str | None = None, prompts: Path | None = None, output: Path | None = None,
            overwrite: bool = False, length: int | None = None, batch_size: int = 16, device: str | None = None,
            show_steps: bool = False, infill: bool = False, sampling: SamplingConfig = SamplingConfig()) -> None:
    """complete prompts (or fill gaps) with a checkpoint or export folder of any model kind

    Args:
        ckpt_path: a checkpoint written by `dimba fit` (e.g. runs/base/checkpoints/last.ckpt) or a folder written
            by `dimba export`; local files only
        prompt: one prompt (default: empty, unconditional generation)
        prompts: a text file with one prompt per line (instead of --prompt)
        output: write JSON lines here instead of printing; re-running resumes it
        overwrite: replace --output (whatever it holds) instead of resuming it
        length: new tokens per prompt (default: the model's context minus the prompt)
        batch_size: prompts sampled together
        device: cpu, cuda, cuda:1, ... (default: CUDA when available)
        show_steps: print the decoded text of the batch's first prompt after every step ("_": not decided yet)
        infill: prompts are templates with gaps {{N}} to fill (N tokens each)
        sampling: how to sample (any model kind; a model refuses an option it cannot honour)
    """
    if prompt is not None and prompts is not None:
        raise ConfigError("give --prompt or --prompts, not both")
    if length is not None and length < 1:
        raise ConfigError(f"--length must be >= 1, got {length}")
    if infill and length is not None:
        raise ConfigError("--length does not apply to --infill: each gap {{N}} says how many tokens to write")
    if batch_size < 1:
        raise ConfigError(f"--batch_size must be >= 1, got {batch_size}")
    texts = read_prompts(prompt, prompts)
    model = load_for_inference(ckpt_path, device)
    model.check_sampling(sampling)
    sampling = model.resolve_sampling(sampling)  # the steps the rows of --output record
    tok = model.tokenizer
    sequences, given, templates = encode_inputs(tok, texts, model.seq_len, model.max_length, length, infill)
    out = JsonlOutput(output, overwrite) if output is not None else None
    start = 0
    if out is not None:
        if out.done != texts[:len(out.done)]:
            out.close()
            raise DimbaError(f"{output} holds results for other prompts; pass --overwrite to replace it, or choose "
                             "another --output")
        start = len(out.done)
        if start:
            print(f"{output}: {start} of {len(texts)} prompts already done, continuing", file=sys.stderr)
    streamed = out is None and len(texts) == 1 and not show_steps and not infill
    stream = Stream(tok, texts[0], given[0].count(True)) if streamed else None
    try:
        bar = tqdm(total=len(texts) - start, desc="prompts", disable=len(texts) - start <= 1, file=sys.stderr)
        for lo in range(start, len(texts), batch_size):
            idx = list(range(lo, min(lo + batch_size, len(texts))))
            show = None
            if show_steps:
                def show(step, rows, guess):
                    if rows[0] == 0:  # the batch's first example
                        print(f"[step {step + 1}] {decode_partial(tok, guess[0].tolist())!r}", file=sys.stderr)
            began = time.perf_counter()
            filled = model.fill([sequences[i] for i in idx], [given[i] for i in idx], sampling, on_step=show,
                                example_ids=idx, on_commit=None if stream is None else stream.commit)
            seconds = (time.perf_counter() - began) / len(idx)
            for i, ids in zip(idx, filled, strict=True):
                text, row = result_row(tok, texts[i], ids, given[i], templates[i])
                if stream is not None:
                    stream.finish(row["completion"])
                elif out is None:
                    print(text)
                else:
                    out.write({**row, "steps": sampling.steps, "seconds": round(seconds, 4)})
            bar.update(len(idx))
        bar.close()
    finally:
        if out is not None:
            out.close()
