"""`dimba eval`: generation quality of a model (any kind) against steps, sampler, guidance, x0 temperature,
reveal order and self-conditioning, and of the AR baseline, on held-out prompts, judged by a separate AR model.

Writes results.json (with a few decoded samples per row and the prompt-sensitivity figures), results.md,
quality_vs_steps.png, quality_vs_entropy.png, quality_vs_latency.png and TensorBoard events to --out_dir.

`dimba eval --task --ckpt_path CKPT`: a model trained on a reasoning task answers the task's test split
(greedy, at each --steps and reveal order it reads): exact match, accuracy per answer position, Sudoku
validity; task.json, task.md and task.png in --out_dir. No judge needed.

Interrupted, it loses at most the setting it was on: finished ones are kept in --out_dir/partial.json and read
back when the same command runs again (`dimba.eval.journal`); settings added to the command are computed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from dimba.errors import ConfigError, DimbaError
from dimba.eval.diagnostics import noise_rank
from dimba.eval.journal import Journal, file_identity
from dimba.eval.quality import INFILL_COLUMNS, KNOB_RANGES, QualityEval, held_out_prompts, markdown, supported
from dimba.sampling import REVEAL_ORDERS, SAMPLERS, SamplingConfig, parse_overrides
from dimba.training.checkpoint import load_for_inference


def csv_list(kind, choices=None):
    def parse(s: str):
        values = [kind(v) for v in s.split(",") if v]
        bad = [v for v in values if choices is not None and v not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"{bad[0]!r} is not one of {choices}")
        return values
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dimba eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt_path", required=True, help="the model to evaluate (any kind)")
    p.add_argument("--judge_ckpt_path", help="a separate AR checkpoint that scores samples (not with --task)")
    p.add_argument("--task", action="store_true", help="evaluate on the test split of the task the model was "
                                                         "trained on (exact match)")
    p.add_argument("--limit", type=int, default=None, help="with --task: only the first N test instances")
    p.add_argument("--ar_ckpt_path", help="the AR baseline to compare with (optional)")
    p.add_argument("--source", default="shakespeare", help="corpus whose validation split gives the prompts")
    p.add_argument("--num_prompts", type=int, default=64)
    p.add_argument("--prompt_len", type=int, default=32)
    p.add_argument("--gen_len", type=int, default=96)
    p.add_argument("--steps", type=csv_list(int), default=None,
                   help="step counts (default 8,16,32,64,128,256; with --task 8,32,128)")
    p.add_argument("--samplers", type=csv_list(str, SAMPLERS), default=["ddim", "ddpm"])
    p.add_argument("--ddpm_steps", type=csv_list(int), default=None, help="steps for ddpm (default: --steps)")
    p.add_argument("--guidance", type=csv_list(float), default=[1.5, 3.0], help="extra CFG scales at --at_steps")
    p.add_argument("--x0_temperatures", type=csv_list(float), default=[],
                   help="extra x0 softmax temperatures at --at_steps")
    p.add_argument("--temperatures", type=csv_list(float), default=[],
                   help="extra final-draw temperatures at --at_steps")
    p.add_argument("--top_ps", type=csv_list(float), default=[], help="extra top-p values at --at_steps")
    p.add_argument("--reveals", type=csv_list(str, REVEAL_ORDERS), default=list(REVEAL_ORDERS),
                   help="reveal orders of committing samplers, at every step count")
    p.add_argument("--sampling", type=parse_overrides, default={}, metavar="NAME=VALUE,...",
                   help="the evaluated model's base setting, under every row, entropy matching and the single-setting "
                        "measurements (e.g. reveal=confidence or latent_target=sample; names as in dimba predict)")
    p.add_argument("--match_entropy", choices=sorted(KNOB_RANGES), default=None,
                   help="also, at each step count (and for the AR baseline), set this knob by bisection so that the "
                        "samples' entropy matches the real continuation's")
    p.add_argument("--infill_gap", type=int, default=0,
                   help="also fill this many tokens hidden in the middle of each held-out block (at --at_steps) and "
                        "judge the whole filled text")
    p.add_argument("--at_steps", type=int, default=32,
                   help="steps of the guidance / temperature / self-cond ablation rows")
    p.add_argument("--sensitivity", action="store_true",
                   help="also measure whether completions follow their prompt or their noise (at --at_steps)")
    p.add_argument("--diagnose", action="store_true",
                   help="also measure, at each noise level, the true token's rank under the noise and the model's "
                        "accuracy there (models that noise embeddings)")
    p.add_argument("--samples", type=int, default=3, help="decoded completions kept per row in results.json")
    p.add_argument("--ar_top_p", type=float, default=0.9)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out_dir", type=Path, default=Path("runs/eval"))
    return p


def check_args(args) -> None:
    if args.steps is None:
        args.steps = [8, 32, 128] if args.task else [8, 16, 32, 64, 128, 256]
    positive = {"--num_prompts": args.num_prompts, "--prompt_len": args.prompt_len, "--gen_len": args.gen_len,
                "--batch_size": args.batch_size, "--at_steps": args.at_steps}
    positive |= {f"--steps {n}": n for n in args.steps + (args.ddpm_steps or [])}
    for name, value in positive.items():
        if value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {args.limit}")
    if args.samples < 0:
        raise ConfigError(f"--samples must be >= 0, got {args.samples}")
    if args.infill_gap and not 0 < args.infill_gap < args.prompt_len + args.gen_len:
        raise ConfigError(f"--infill_gap must be in 1..{args.prompt_len + args.gen_len - 1}, got {args.infill_gap}")


def at_steps_config(model, args, base: dict) -> SamplingConfig:
    """The setting of the single-setting measurements (infilling, prompt sensitivity): `base` (--sampling for
    the evaluated model, nothing for the AR baseline) at --at_steps steps where the model has steps."""
    wanted = SamplingConfig(seed=args.seed, **(base | {"steps": args.at_steps}))
    return wanted if wanted.changed() <= model.sampling_options else SamplingConfig(seed=args.seed, **base)


def check_base_setting(model, args) -> None:
    """--sampling may only set what the evaluated model reads (its rows would silently vanish otherwise)."""
    unread = sorted(SamplingConfig(**args.sampling).changed() - model.sampling_options)
    if unread:
        raise ConfigError(f"--sampling sets {', '.join(unread)}, which {model.display_name} does not read")


def grid(args) -> list[SamplingConfig]:
    """Every setting the flags ask for; `supported` keeps those the model reads."""
    config = lambda **kw: SamplingConfig(seed=args.seed, **(args.sampling | kw))
    configs = [config()]
    for sampler in args.samplers:
        for steps in (args.ddpm_steps or args.steps) if sampler == "ddpm" else args.steps:
            configs += [config(sampler=sampler, steps=steps, reveal=r) for r in args.reveals]
    at = args.at_steps
    configs += [config(steps=at, guidance=g) for g in args.guidance]
    configs += [config(steps=at, x0_temperature=x) for x in args.x0_temperatures]
    configs += [config(steps=at, temperature=x) for x in args.temperatures]
    configs += [config(steps=at, top_p=p) for p in args.top_ps]
    configs.append(config(steps=at, self_condition=False))
    return configs


def fingerprint(args, *names) -> dict:
    """What every piece of this evaluation depends on: the checkpoint files and the flags `names`."""
    return {"checkpoints": [file_identity(getattr(args, k)) for k in ("ckpt_path", "judge_ckpt_path", "ar_ckpt_path")],
            **{k: getattr(args, k) for k in names}}


def evaluate_on_task(args, journal: Journal) -> dict:
    from dimba.eval.tasks import TaskEval, greedy_configs, task_of
    from dimba.training.checkpoint import read_checkpoint

    model = load_for_inference(args.ckpt_path, args.device)
    check_base_setting(model, args)
    source, options, seq_len = task_of(model, read_checkpoint(args.ckpt_path))
    task = TaskEval(source, options, seq_len, model_cache(), args.limit)
    rows = [journal.run(["task", cfg.as_dict()], task.row, model, cfg, args.batch_size)
            for cfg in tqdm(greedy_configs(model, args.steps, args.reveals, args.seed, args.sampling), desc="settings",
                            file=sys.stderr)]
    return {"settings": vars(args) | {"out_dir": str(args.out_dir)}, "task": {"source": source, "options": options},
            "parameters": {model.kind: model.num_parameters()}, "rows": rows}


def model_cache():
    from dimba.data.shakespeare import cache_dir

    return cache_dir()


def evaluate(args, journal: Journal) -> dict:
    if args.judge_ckpt_path is None:
        raise ConfigError("--judge_ckpt_path is needed (an AR checkpoint that scores the samples), or --task")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    model = load_for_inference(args.ckpt_path, args.device)
    check_base_setting(model, args)
    judge = load_for_inference(args.judge_ckpt_path, args.device)
    if not judge.can_score:
        raise DimbaError(f"--judge_ckpt_path must be an autoregressive model; it holds {judge.display_name}, "
                         "which cannot score text")
    models = [model] + ([load_for_inference(args.ar_ckpt_path, args.device)] if args.ar_ckpt_path else [])
    if any(m.tokenizer.fingerprint != judge.tokenizer.fingerprint for m in models):
        raise DimbaError("the judge was trained with another tokenizer than the evaluated model(s)")
    prompts, refs, freq = held_out_prompts(model.tokenizer, args.source, args.prompt_len, args.gen_len,
                                           args.num_prompts, args.out_dir)
    quality = QualityEval(judge, prompts, refs, freq, args.samples)
    plans = [(model, supported(model, grid(args)))]
    if args.ar_ckpt_path:
        ar_grid = [SamplingConfig(seed=args.seed), SamplingConfig(seed=args.seed, top_p=args.ar_top_p)]
        plans.append((models[1], supported(models[1], ar_grid)))
    rows = list(journal.run(["references", args.seed], quality.references, args.seed))
    progress = tqdm(total=sum(len(configs) for _, configs in plans), desc="settings", file=sys.stderr)
    for m, configs in plans:
        for cfg in configs:
            rows.append(journal.run(["row", m.kind, cfg.as_dict()], quality.model_row, m, cfg, args.batch_size))
            progress.update(1)
    progress.close()
    if args.match_entropy:
        for m, _ in plans:
            knob = args.match_entropy if args.match_entropy in m.sampling_options else "top_p"
            steps = args.steps if "steps" in m.sampling_options else [None]
            for n in tqdm(steps, desc=f"entropy matching ({m.short_name})", file=sys.stderr):
                base = SamplingConfig(seed=args.seed, **((args.sampling if m is model else {})
                                                         | ({"steps": n} if n is not None else {})))
                rows.append(journal.run(["match_entropy", m.kind, knob, base.as_dict()], quality.match_entropy, m,
                                        base, knob, args.batch_size))
    result = {"settings": vars(args) | {"out_dir": str(args.out_dir)},
              "parameters": {name: m.num_parameters() for name, m in zip((model.kind, "ar"), models, strict=False)}
              | {"judge": judge.num_parameters()},
              "rows": rows}
    at_steps = {m.kind: at_steps_config(m, args, args.sampling if m is model else {}) for m in models}
    gap = args.infill_gap
    if gap:
        result["infill"] = [journal.run(["infill_reference", gap], quality.infill_reference_row, gap)] + [
            journal.run(["infill", m.kind, gap, at_steps[m.kind].as_dict()], quality.infill_row, m,
                        at_steps[m.kind], gap, args.batch_size) for m in models]
    if args.diagnose:
        if model.kind != "dimba":
            raise DimbaError(f"--diagnose needs a model that noises embeddings; {model.display_name} does not")
        tokens = torch.tensor([p + r for p, r in zip(prompts, refs, strict=True)], device=model.device)
        result["noise_rank"] = journal.run(["noise_rank"], noise_rank, model, tokens)
    if args.sensitivity:
        result["prompt_sensitivity"] = [
            journal.run(["sensitivity", m.kind, at_steps[m.kind].as_dict()], quality.prompt_sensitivity, m,
                        at_steps[m.kind], args.batch_size) for m in models]
    return result


def write_outputs(result: dict, out: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    from dimba.eval.plots import quality_vs_entropy, quality_vs_latency, quality_vs_steps

    rows = result["rows"]
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str))
    table = markdown(rows)
    if result.get("prompt_sensitivity"):
        keys = list(result["prompt_sensitivity"][0])
        table += "\nPrompt sensitivity\n\n| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n"
        table += "".join("| " + " | ".join(f"{r[k]:.3g}" if isinstance(r[k], float) else str(r[k]) for k in keys)
                         + " |\n" for r in result["prompt_sensitivity"])
    if result.get("infill"):
        table += ("\nInfilling (the judge's perplexity of the whole filled text; its nats per token on the gap and on "
                  "the text after it)\n\n" + markdown(result["infill"], INFILL_COLUMNS))
    if result.get("noise_rank"):
        keys = list(result["noise_rank"][0])
        table += "\nNoise level diagnostics\n\n| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n"
        table += "".join("| " + " | ".join(f"{r[k]:.3g}" for k in keys) + " |\n" for r in result["noise_rank"])
    (out / "results.md").write_text(table)
    writer = SummaryWriter(str(out))
    writer.add_text("results", table)
    writer.add_figure("quality_vs_steps", quality_vs_steps(rows, out / "quality_vs_steps.png"))
    writer.add_figure("quality_vs_entropy", quality_vs_entropy(rows, out / "quality_vs_entropy.png"))
    if any(r.get("latency_b1_s") for r in rows):
        writer.add_figure("quality_vs_latency", quality_vs_latency(rows, out / "quality_vs_latency.png"))
    writer.close()
    print(table)


def write_task_outputs(result: dict, out: Path) -> None:
    from dimba.eval.tasks import plot_task_rows, task_table

    out.mkdir(parents=True, exist_ok=True)
    (out / "task.json").write_text(json.dumps(result, indent=2, default=str))
    table = task_table(result["rows"])
    (out / "task.md").write_text(f"Task {result['task']['source']} {result['task']['options']}\n\n" + table)
    plot_task_rows(result["rows"], out / "task.png")
    print(table)


def main(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    check_args(args)
    if args.task:
        journal = Journal(args.out_dir, fingerprint(args, "task", "limit", "batch_size"))
        write_task_outputs(evaluate_on_task(args, journal), args.out_dir)
    else:
        journal = Journal(args.out_dir, fingerprint(args, "source", "num_prompts", "prompt_len", "gen_len",
                                                     "samples", "batch_size"))
        write_outputs(evaluate(args, journal), args.out_dir)
    journal.close()
