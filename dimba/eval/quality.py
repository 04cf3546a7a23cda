"""`dimba eval`: generation quality of DIMBA (against steps, sampler, guidance, x0 temperature,
self-conditioning) and of the AR baseline, on held-out prompts, judged by a separate AR model.

For each setting: gen-PPL (the judge's perplexity of the completion given the prompt), unigram entropy,
distinct-1..4 and the repeated-4-gram rate, plus latency. The real continuation (the floor) and tokens drawn
at random by corpus frequency (the ceiling) are scored the same way. Writes results.json (with a few
decoded samples per row), results.md, quality_vs_steps.png, quality_vs_entropy.png, quality_vs_latency.png
and TensorBoard events to --out_dir.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dimba.checkpoint import load_for_inference
from dimba.diffusion.generate import SamplingConfig
from dimba.errors import DimbaError
from dimba.eval.metrics import diversity
from dimba.lit_ar import ARLM, perplexity
from dimba.lit_module import DimbaLM

COLUMNS = ["label", "gen_ppl", "entropy_bits", "distinct_1", "distinct_2", "distinct_3", "distinct_4", "repeat_4",
           "seconds_per_sample", "latency_b1_s"]


def csv_list(kind):
    return lambda s: [kind(v) for v in s.split(",") if v]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dimba eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt_path", required=True, help="the DIMBA checkpoint")
    p.add_argument("--judge_ckpt_path", required=True, help="a separate AR checkpoint that scores samples")
    p.add_argument("--ar_ckpt_path", help="the AR baseline to compare with (optional)")
    p.add_argument("--source", default="shakespeare", help="corpus whose validation split gives the prompts")
    p.add_argument("--num_prompts", type=int, default=64)
    p.add_argument("--prompt_len", type=int, default=32)
    p.add_argument("--gen_len", type=int, default=96)
    p.add_argument("--steps", type=csv_list(int), default=[8, 16, 32, 64, 128, 256])
    p.add_argument("--samplers", type=csv_list(str), default=["ddim", "ddpm"])
    p.add_argument("--ddpm_steps", type=csv_list(int), default=None, help="steps for ddpm (default: --steps)")
    p.add_argument("--guidance", type=csv_list(float), default=[1.5, 3.0], help="extra CFG scales at --at_steps")
    p.add_argument("--x0_temperatures", type=csv_list(float), default=[],
                   help="extra x0 softmax temperatures at --at_steps")
    p.add_argument("--at_steps", type=int, default=32,
                   help="steps of the guidance / x0-temperature / self-cond ablation rows")
    p.add_argument("--samples", type=int, default=3, help="decoded completions kept per row in results.json")
    p.add_argument("--ar_top_p", type=float, default=0.9)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out_dir", type=Path, default=Path("runs/eval"))
    return p


def held_out_prompts(model, source: str, prompt_len: int, gen_len: int, n: int, out_dir: Path):
    """(prompts, continuations, unigram frequencies of the training split) from the corpus, tokenised with
    the checkpoint's own tokenizer."""
    from dimba.data.datamodule import TextDataModule

    tok_path = out_dir / "tokenizer.json"
    model.tokenizer.save(tok_path)
    dm = TextDataModule(source=source, tokenizer_path=str(tok_path), seq_len=prompt_len + gen_len)
    dm.setup("fit")
    blocks = np.asarray(dm.val_set.blocks[:n])
    if len(blocks) < n:
        raise DimbaError(f"the validation split has only {len(blocks)} blocks of {prompt_len + gen_len} tokens")
    freq = np.bincount(np.asarray(dm.train_set.blocks).ravel(), minlength=model.tokenizer.vocab_size)
    return blocks[:, :prompt_len].tolist(), blocks[:, prompt_len:].tolist(), freq / freq.sum()


def judge_ppl(judge: ARLM, prompts, completions) -> float:
    """Perplexity of the completions given EOS + prompt, under the judge."""
    eos = judge.tokenizer.eos_id
    nll, count = 0.0, 0
    for p, c in zip(prompts, completions, strict=True):
        seq = torch.tensor([[eos, *p, *c]], device=judge.device)
        mask = torch.zeros_like(seq, dtype=torch.bool)
        mask[:, 1 + len(p):] = True
        a, b = judge.score(seq, mask)
        nll, count = nll + a, count + b
    return perplexity(nll, count)


def run_generator(generate, prompts, batch_size):
    """All completions, seconds per sample (batched) and batch-1 latency (one prompt, median of 3)."""
    out, began = [], time.perf_counter()
    for lo in range(0, len(prompts), batch_size):
        out.extend(generate(prompts[lo:lo + batch_size]))
    per_sample = (time.perf_counter() - began) / len(prompts)
    singles = []
    for _ in range(3):
        t0 = time.perf_counter()
        generate(prompts[:1])
        singles.append(time.perf_counter() - t0)
    return out, per_sample, float(np.median(singles))


def dimba_label(cfg: SamplingConfig) -> str:
    return (f"DIMBA {cfg.sampler} {cfg.steps} steps" + (f", guidance {cfg.guidance}" if cfg.guidance != 1 else "")
            + (f", x0 temperature {cfg.x0_temperature}" if cfg.x0_temperature != 1 else "")
            + ("" if cfg.self_condition else ", no self-cond"))


def markdown(rows: list[dict]) -> str:
    head = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else ("" if v is None else str(v))
    return head + "".join("| " + " | ".join(fmt(r.get(c)) for c in COLUMNS) + " |\n" for r in rows)


def evaluate(args) -> list[dict]:
    args.out_dir.mkdir(parents=True, exist_ok=True)
    model = load_for_inference(args.ckpt_path, args.device)
    judge = load_for_inference(args.judge_ckpt_path, args.device)
    if not isinstance(model, DimbaLM) or not isinstance(judge, ARLM):
        raise DimbaError("--ckpt_path must be a DIMBA checkpoint and --judge_ckpt_path an AR one")
    if judge.tokenizer.fingerprint != model.tokenizer.fingerprint:
        raise DimbaError("the judge was trained with another tokenizer than the DIMBA model")
    prompts, refs, freq = held_out_prompts(model, args.source, args.prompt_len, args.gen_len, args.num_prompts,
                                           args.out_dir)

    tok = model.tokenizer

    def row(label, model_kind, completions, **extra) -> dict:
        samples = [{"prompt": tok.decode(p), "completion": tok.decode(c)}
                   for p, c in zip(prompts[:args.samples], completions[:args.samples], strict=True)]
        return {"label": label, "model": model_kind, "gen_ppl": judge_ppl(judge, prompts, completions),
                **diversity(completions), **extra, "samples": samples}

    rows = [row("real continuation", "reference", refs)]
    rng = np.random.default_rng(args.seed)
    random_tokens = rng.choice(len(freq), size=(len(prompts), args.gen_len), p=freq).tolist()
    rows.append(row("random tokens by corpus frequency", "random", random_tokens))

    def config(**kw) -> SamplingConfig:
        return SamplingConfig(seed=args.seed, **kw)

    settings = [config(sampler=s, steps=n) for s in args.samplers
                for n in ((args.ddpm_steps or args.steps) if s == "ddpm" else args.steps)]
    settings += [config(steps=args.at_steps, guidance=g) for g in args.guidance]
    settings += [config(steps=args.at_steps, x0_temperature=x) for x in args.x0_temperatures]
    settings.append(config(steps=args.at_steps, self_condition=False))
    for cfg in tqdm(settings, desc="DIMBA settings", file=sys.stderr):
        gen = lambda batch, cfg=cfg: model.generate(batch, args.gen_len, cfg)[0]
        completions, per_sample, latency = run_generator(gen, prompts, args.batch_size)
        rows.append(row(dimba_label(cfg), "dimba", completions, sampler=cfg.sampler, steps=cfg.steps,
                        guidance=cfg.guidance, self_condition=cfg.self_condition, x0_temperature=cfg.x0_temperature,
                        seconds_per_sample=per_sample, latency_b1_s=latency))
    if args.ar_ckpt_path:
        ar = load_for_inference(args.ar_ckpt_path, args.device)
        if not isinstance(ar, ARLM):
            raise DimbaError("--ar_ckpt_path must be an AR checkpoint")
        for top_p in (1.0, args.ar_top_p):
            gen = lambda batch, top_p=top_p: ar.generate(batch, args.gen_len, 1.0, top_p, args.seed)
            completions, per_sample, latency = run_generator(gen, prompts, args.batch_size)
            label = f"AR, temperature 1{f', top-p {top_p}' if top_p < 1 else ''}"
            rows.append(row(label, "ar", completions, top_p=top_p, seconds_per_sample=per_sample,
                            latency_b1_s=latency))
    return rows


def write_outputs(rows: list[dict], args, params: dict) -> None:
    from torch.utils.tensorboard import SummaryWriter

    from dimba.eval.plots import quality_vs_entropy, quality_vs_latency, quality_vs_steps

    out = args.out_dir
    (out / "results.json").write_text(json.dumps({"settings": vars(args) | {"out_dir": str(out)},
                                                  "parameters": params, "rows": rows}, indent=2, default=str))
    table = markdown(rows)
    (out / "results.md").write_text(table)
    writer = SummaryWriter(str(out))
    writer.add_text("results", table)
    writer.add_figure("quality_vs_steps", quality_vs_steps(rows, out / "quality_vs_steps.png"))
    writer.add_figure("quality_vs_entropy", quality_vs_entropy(rows, out / "quality_vs_entropy.png"))
    if any(r.get("latency_b1_s") for r in rows):
        writer.add_figure("quality_vs_latency", quality_vs_latency(rows, out / "quality_vs_latency.png"))
    writer.close()
    print(table)


def main(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    rows = evaluate(args)
    params = {k: load_for_inference(v).num_parameters() for k, v in
              (("dimba", args.ckpt_path), ("judge", args.judge_ckpt_path), ("ar", args.ar_ckpt_path)) if v}
    write_outputs(rows, args, params)
