"""`dimba eval`: generation quality of a model (any kind) over a grid of sampling settings and of the AR
baseline, on held-out prompts, judged by a separate AR model; or, with --task, exact match on a reasoning task.

Writes results.json (with a few decoded samples per row and the prompt-sensitivity figures), results.md,
quality_vs_steps.png, quality_vs_entropy.png, quality_vs_latency.png and TensorBoard events to --out_dir
(task.json, task.md and task.png with --task). Interrupted, it loses at most the setting it was on: finished
ones are kept in --out_dir/partial.json and read back when the same command runs again (`dimba.eval.journal`);
settings added to the command are computed.
"""

from __future__ import annotations

import glob
import itertools
import json
import sys
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace
from typing import Literal

import torch
from tqdm import tqdm

from dimba.errors import ConfigError, DimbaError
from dimba.eval.diagnostics import noise_rank
from dimba.eval.journal import JOURNAL_NAME, Journal, file_identity
from dimba.eval.quality import (
    INFILL_COLUMNS,
    KNOB_RANGES,
    LONG_COLUMNS,
    QualityEval,
    held_out_prompts,
    markdown,
    supported,
)
from dimba.outputs import check_out_dir
from dimba.sampling import SamplingConfig
from dimba.training.checkpoint import load_for_inference

MatchKnob = Literal[tuple(KNOB_RANGES)]  # the sampling options entropy matching can set
TEXT_GRID = {"steps": [8, 16, 32, 64, 128, 256], "sampler": ["ddim", "ddpm"], "reveal": ["random", "confidence"]}
TASK_GRID = {"steps": [8, 32, 128], "reveal": ["random", "confidence"]}
OPTIONS = tuple(f.name for f in fields(SamplingConfig) if f.name != "seed")
# Everything `dimba eval` writes into its --out_dir (and nothing else may be there).
OUTPUTS = ("results.json", "results.md", "quality_vs_*.png", "task.json", "task.md", "task.png", JOURNAL_NAME,
           "partial.tmp", "events.out.tfevents.*")


def sweep_configs(base: SamplingConfig, grid: dict[str, list]) -> list[SamplingConfig]:
    """Every combination of the grid's values over `base` (each a SamplingConfig, checked), in order."""
    unknown = sorted(set(grid) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"unknown sampling option(s) {', '.join(unknown)} in a grid; known: {', '.join(OPTIONS)}")
    if any(not isinstance(values, list) or not values for values in grid.values()):
        raise ConfigError(f"every grid entry needs a non-empty list of values, got {grid}")
    names = list(grid)
    return [base.replace(**dict(zip(names, combo, strict=True))) for combo in itertools.product(*grid.values())]


def read_by(model, grid: dict[str, list]) -> dict[str, list]:
    """The part of a grid the model reads (a model without steps gets one row, not one per step count)."""
    return {name: values for name, values in grid.items() if name in model.sampling_options}


def check_base_setting(model, base: SamplingConfig) -> None:
    """--sampling may only set what the evaluated model reads (its rows would silently vanish otherwise)."""
    unread = sorted(base.changed() - model.sampling_options)
    if unread:
        raise ConfigError(f"--sampling sets {', '.join(unread)}, which {model.display_name} does not read")


def text_configs(model, args) -> list[SamplingConfig]:
    """The grid's settings, then one row per ablation value at --at_steps; `supported` keeps those the model reads."""
    base = model.resolve_sampling(args.sampling)
    configs = [base] + sweep_configs(base, read_by(model, args.grid))
    at = model.resolve_sampling(base.replace(steps=args.at_steps))
    for name, values in args.ablations.items():
        configs += sweep_configs(at, {name: values})
    return supported(model, configs)


def at_steps_config(model, args, base: SamplingConfig) -> SamplingConfig:
    """The setting of the single-setting measurements (infilling, prompt sensitivity): `base` at --at_steps steps
    (unset: the model's default) where the model has steps."""
    return model.resolve_sampling(base.replace(steps=args.at_steps)) if "steps" in model.sampling_options else base


def fingerprint(args, *names) -> dict:
    """What every piece of this evaluation depends on: the checkpoint files and the settings `names`."""
    files = list(args.checkpoints) + [args.judge_ckpt_path, args.ar_ckpt_path]
    return {"checkpoints": [file_identity(path) for path in files], **{k: getattr(args, k) for k in names}}


def matching_checkpoints(ckpt_path: str, task: bool) -> list[str]:
    """--ckpt_path as one checkpoint, or with --task a glob pattern: every checkpoint it matches (a learning curve)."""
    if not glob.has_magic(ckpt_path):
        return [ckpt_path]
    if not task:
        raise ConfigError(f"--ckpt_path {ckpt_path!r} is a pattern; several checkpoints are evaluated with --task "
                          "true (a learning curve); text evaluation takes one")
    matches = sorted(glob.glob(ckpt_path))
    if not matches:
        raise ConfigError(f"--ckpt_path {ckpt_path!r} matches no file")
    return matches


def evaluate_on_task(args, journal: Journal) -> dict:
    """Every checkpoint of --ckpt_path (in training order) on every setting of the task grid, after the
    baselines; each row carries the step and epochs its checkpoint had trained."""
    from dimba.data.shakespeare import cache_dir
    from dimba.eval.tasks import TaskEval, task_of, training_progress
    from dimba.training.checkpoint import read_checkpoint

    # What the curve needs of each checkpoint, not its weights and optimizer state: many checkpoints stay light.
    keep = ("global_step", "loops", "datamodule_hyper_parameters")
    trained = {path: {k: v for k, v in read_checkpoint(path).items() if k in keep} for path in args.checkpoints}
    order = sorted(args.checkpoints, key=lambda path: trained[path].get("global_step", 0))
    rows, task = [], None

    def scored(model, cfg: SamplingConfig, progress: dict) -> dict:
        return task.row(model, cfg, args.batch_size) | progress

    for path in tqdm(order, desc="checkpoints", file=sys.stderr, disable=len(order) == 1):
        model = load_for_inference(path, args.device)
        check_base_setting(model, args.sampling)
        source, options, seq_len = task_of(model, trained[path])
        if task is None:
            task = TaskEval(source, options, seq_len, cache_dir(), args.limit)
            rows += journal.run(["task_baselines"], task.baseline_rows)
        elif (source, options) != (task.source, task.options):
            raise DimbaError(f"{path} was trained on {source} {options}, the first checkpoint on {task.source} "
                             f"{task.options}: a learning curve needs one task")
        progress = {"checkpoint": Path(path).name, **training_progress(trained[path], options)}
        base = model.resolve_sampling(args.sampling.replace(temperature=0.0))
        configs = supported(model, sweep_configs(base, read_by(model, args.grid)))
        rows += [journal.run(["task", file_identity(path), cfg.as_dict()], scored, model, cfg, progress)
                 for cfg in tqdm(configs, desc="settings", file=sys.stderr)]
    return {"settings": settings_record(args), "task": {"source": task.source, "options": task.options},
            "parameters": {model.kind: model.num_parameters()}, "rows": rows}


def settings_record(args) -> dict:
    return {k: v.as_dict() if isinstance(v, SamplingConfig) else (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()}


def evaluate_text(args, journal: Journal) -> dict:
    if args.judge_ckpt_path is None:
        raise ConfigError("--judge_ckpt_path is needed (an AR checkpoint that scores the samples), or --task true")
    model = load_for_inference(args.ckpt_path, args.device)
    check_base_setting(model, args.sampling)
    for length in args.long_lengths:
        if length > model.max_length:
            raise DimbaError(f"--long_lengths {length}: {model.display_name} generates at most {model.max_length} "
                             "tokens (block models generate past their training context)")
    judge = load_for_inference(args.judge_ckpt_path, args.device)
    if not judge.can_score:
        raise DimbaError(f"--judge_ckpt_path must be an autoregressive model; it holds {judge.display_name}, "
                         "which cannot score text")
    models = [model] + ([load_for_inference(args.ar_ckpt_path, args.device)] if args.ar_ckpt_path else [])
    if any(m.tokenizer.fingerprint != judge.tokenizer.fingerprint for m in models):
        raise DimbaError("the judge was trained with another tokenizer than the evaluated model(s)")
    prompts, refs, freq = held_out_prompts(model.tokenizer, args.source, args.prompt_len, args.gen_len,
                                           args.num_prompts)
    quality = QualityEval(judge, prompts, refs, freq, args.samples)
    seed = args.sampling.seed
    bases = {model.kind: model.resolve_sampling(args.sampling)} | (
        {models[1].kind: SamplingConfig(seed=seed)} if args.ar_ckpt_path else {})
    plans = [(model, text_configs(model, args))]
    if args.ar_ckpt_path:
        plans.append((models[1], supported(models[1], [SamplingConfig(seed=seed),
                                                       SamplingConfig(seed=seed, top_p=args.ar_top_p)])))
    rows = list(journal.run(["references", seed], quality.references, seed))
    progress = tqdm(total=sum(len(configs) for _, configs in plans), desc="settings", file=sys.stderr)
    for m, configs in plans:
        for cfg in configs:
            rows.append(journal.run(["row", m.kind, cfg.as_dict()], quality.model_row, m, cfg, args.batch_size))
            progress.update(1)
    progress.close()
    if args.match_entropy:
        for m, _ in plans:
            knob = args.match_entropy if args.match_entropy in m.sampling_options else "top_p"
            steps = args.grid.get("steps", [args.sampling.steps]) if "steps" in m.sampling_options else [None]
            # A grid option with one value (e.g. reveal: [confidence]) is the setting asked for: match there too.
            fixed = {} if m is not model else {k: v[0] for k, v in args.grid.items()
                                              if len(v) == 1 and k not in ("steps", knob) and k in m.sampling_options}
            for n in tqdm(steps, desc=f"entropy matching ({m.short_name})", file=sys.stderr):
                base = bases[m.kind].replace(**fixed | ({} if n is None else {"steps": n}))
                rows.append(journal.run(["match_entropy", m.kind, knob, base.as_dict()], quality.match_entropy, m,
                                        base, knob, args.batch_size))
    result = {"settings": settings_record(args),
              "parameters": {m.kind: m.num_parameters() for m in models} | {"judge": judge.num_parameters()},
              "rows": rows}
    at_steps = {m.kind: at_steps_config(m, args, bases[m.kind]) for m in models}
    gap = args.infill_gap
    if gap:
        result["infill"] = [journal.run(["infill_reference", gap], quality.infill_reference_row, gap)] + [
            journal.run(["infill", m.kind, gap, at_steps[m.kind].as_dict()], quality.infill_row, m,
                        at_steps[m.kind], gap, args.batch_size) for m in models]
    if args.diagnose:
        if not getattr(model, "noises_embeddings", False):
            raise DimbaError(f"--diagnose needs a model that noises embeddings; {model.display_name} does not")
        tokens = torch.tensor([p + r for p, r in zip(prompts, refs, strict=True)], device=model.device)
        result["noise_rank"] = journal.run(["noise_rank"], noise_rank, model, tokens)
    if args.long_lengths:
        result["long"] = [journal.run(["long", length, at_steps[model.kind].as_dict()], quality.long_row, model,
                                      at_steps[model.kind], length, args.batch_size) for length in args.long_lengths]
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
    if result.get("long"):
        table += ("\nPast the training context (the first and the last window of each completion, judged given the "
                  "text before it)\n\n" + markdown(result["long"], LONG_COLUMNS))
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
    from dimba.eval.tasks import plot_learning_curves, plot_task_rows, task_table

    out.mkdir(parents=True, exist_ok=True)
    (out / "task.json").write_text(json.dumps(result, indent=2, default=str))
    table = task_table(result["rows"])
    (out / "task.md").write_text(f"Task {result['task']['source']} {result['task']['options']}\n\n" + table)
    if len({r["checkpoint"] for r in result["rows"] if "checkpoint" in r}) > 1:
        plot_learning_curves({out.name: result["rows"]}, out / "task.png")
    else:
        plot_task_rows(result["rows"], out / "task.png")
    print(table)


def evaluate(ckpt_path: str, judge_ckpt_path: str | None = None, ar_ckpt_path: str | None = None,
             task: bool = False, limit: int | None = None, source: str = "shakespeare", num_prompts: int = 64,
             prompt_len: int = 32, gen_len: int = 96, grid: dict[str, list] | None = None,
             ablations: dict[str, list] | None = None, at_steps: int | None = None,
             sampling: SamplingConfig = SamplingConfig(),
             match_entropy: MatchKnob | None = None, infill_gap: int = 0,
             sensitivity: bool = False, diagnose: bool = False, long_lengths: list[int] | None = None,
             samples: int = 3, ar_top_p: float = 0.9,
             batch_size: int = 16, device: str | None = None, out_dir: Path = Path("runs/eval")) -> None:
    """judge generation quality over a grid of sampling settings (or, with --task, exact match on a task)

    Every row of the grid, and every row of the ablations, is a `SamplingConfig` over --sampling (the base
    setting); a model gets the rows of the options it reads.

    Args:
        ckpt_path: the model to evaluate (any kind); with --task also a glob pattern, e.g.
            'runs/ps5k/checkpoints/step=*.ckpt': every checkpoint it matches, a learning curve in training order
        judge_ckpt_path: a separate AR checkpoint that scores the samples (not with --task)
        ar_ckpt_path: the AR baseline to compare with (optional)
        task: evaluate on the test split of the reasoning task the model was trained on (exact match, greedy)
        limit: with --task: only the first N test instances
        source: the corpus whose validation split gives the prompts
        num_prompts: held-out prompts
        prompt_len: tokens of each prompt
        gen_len: tokens generated after each prompt
        grid: the sampling options crossed with each other, e.g. '{steps: [8, 32], reveal: [random]}' (default: steps
            8..256 x sampler ddim/ddpm x reveal random/confidence; with --task steps 8/32/128 x both reveals)
        ablations: one row per value at --at_steps, e.g. '{guidance: [1.5, 3.0], x0_temperature: [0.9]}' (default:
            guidance 1.5 and 3, self_condition false)
        at_steps: steps of the ablation rows, of infilling and of prompt sensitivity (default: the model's own, 32 or
            a block model's block size)
        sampling: the evaluated model's base setting, under every row (its seed is the evaluation's)
        match_entropy: also, at each step count of the grid (and for the AR baseline, by top_p), set this knob by
            bisection so that the samples' entropy matches the real continuation's; at the base setting, with the
            grid's options that have one value (a grid of reveal: [confidence] is matched with that reveal)
        infill_gap: also fill this many tokens hidden in the middle of each held-out block (at --at_steps) and judge
            the whole filled text
        sensitivity: also measure whether completions follow their prompt or their noise (at --at_steps)
        diagnose: also measure, at each noise level, the true token's rank under the noise and the model's accuracy
            there (models that noise embeddings)
        long_lengths: also generate this many tokens after each prompt (at --at_steps; block models go past their
            training context) and judge the first and the last window: does quality hold?
        samples: decoded completions kept per row in results.json
        ar_top_p: the nucleus of the AR baseline's second row
        batch_size: prompts sampled together
        device: cpu, cuda, ... (default: CUDA when available)
        out_dir: a new folder, or one this command wrote before (it refuses one holding other files)
    """
    args = SimpleNamespace(**{k: v for k, v in locals().items()})
    args.grid = (TASK_GRID if task else TEXT_GRID) if grid is None else grid
    args.ablations = {"guidance": [1.5, 3.0], "self_condition": [False]} if ablations is None else ablations
    args.long_lengths = long_lengths or []
    args.checkpoints = matching_checkpoints(ckpt_path, task)
    positive = {"--num_prompts": num_prompts, "--prompt_len": prompt_len, "--gen_len": gen_len,
                "--batch_size": batch_size} | ({} if at_steps is None else {"--at_steps": at_steps})
    for name, value in positive.items():
        if value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {limit}")
    if samples < 0:
        raise ConfigError(f"--samples must be >= 0, got {samples}")
    if any(n < 1 for n in long_lengths or []):
        raise ConfigError(f"--long_lengths must hold positive lengths, got {long_lengths}")
    if infill_gap and not 0 < infill_gap < prompt_len + gen_len:
        raise ConfigError(f"--infill_gap must be in 1..{prompt_len + gen_len - 1}, got {infill_gap}")
    if not 0 < ar_top_p <= 1:
        raise ConfigError(f"--ar_top_p must be in (0, 1], got {ar_top_p}")
    for table in (args.grid, args.ablations):
        sweep_configs(SamplingConfig(), table)  # every value checked before anything runs
    check_out_dir(out_dir, OUTPUTS, "dimba eval")
    if task:
        journal = Journal(out_dir, fingerprint(args, "task", "limit", "batch_size"))
        write_task_outputs(evaluate_on_task(args, journal), out_dir)
    else:
        journal = Journal(out_dir, fingerprint(args, "source", "num_prompts", "prompt_len", "gen_len", "samples",
                                               "batch_size"))
        out_dir.mkdir(parents=True, exist_ok=True)
        write_outputs(evaluate_text(args, journal), out_dir)
    journal.close()
