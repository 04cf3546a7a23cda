"""The scale question, prepared as one call on a lent GPU (run through scripts/gpu_scale.sh; see its header).

Phases, each printing its summary as it ends and saving every log into $OUT/gpu_scale.tar.gz:
1. train, side by side on one GPU, time-boxed: on Shakespeare the AR judge (8 layers, seed 1), AR, masked
   diffusion, the whole-sequence DIMBA (hybrid) and, with --block_size, the block DIMBA (the default); on
   path-star d=2 (50k training instances) AR, masked and DIMBA;
2. evaluate: the ladder's protocol (64 held-out prompts, 96 tokens, entropy matched to real text) at 8 and 32
   steps against the in-call judge; path-star exact match on 1000 test instances;
3. latency at batch 1, 1024 new tokens: DIMBA at 8 and 32 steps against AR decoding with CUDA graphs
   (torch.compile mode reduce-overhead);
4. the table: tokens seen against the 160M target (20x the CPU's 2000-step rung), gen-PPL and its ratio to AR
   beside the CPU's (DIMBA 19x, masked 11x), path-star exact match and epochs, latency.
`--dry-run` runs every phase on the CPU with tiny models, a tiny corpus and a few steps (the test suite does).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
CPU_RATIOS = {"masked": 10.8, "dimba": 19.0}  # docs/results.md, 2000 steps on the CPU, 32 sampling steps
TARGET_TOKENS = 160_000_000


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Call:
    """The run's folders, settings and subprocesses."""

    def __init__(self, args):
        self.dry = args.dry_run
        self.out = Path(args.out)
        self.work = Path(args.work)
        self.logs = self.work / "logs"
        for folder in (self.out, self.logs):
            folder.mkdir(parents=True, exist_ok=True)
        self.train_seconds = 20 if self.dry else args.train_seconds
        self.block_size = args.block_size

    def save(self) -> None:
        """Everything written so far, as one tarball (the device returns a few files only)."""
        with tarfile.open(self.out / "gpu_scale.tar.gz", "w:gz") as tar:
            tar.add(self.logs, arcname="logs")
            for name in ("eval", "bench", "summary.json", "summary.md"):
                if (self.work / name).exists():
                    tar.add(self.work / name, arcname=name)

    def start(self, name: str, *args):
        """`dimba ARGS` with its output in logs/NAME.log: a process of its own on the GPU (the runs go side by
        side); in the dry run, in this process, one after the other (the same commands, without the start-up
        cost of eight interpreters on a small CPU)."""
        args = [str(a) for a in args]
        handle = open(self.logs / f"{name}.log", "w")
        if self.dry:
            return Finished(args, handle)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        return subprocess.Popen([sys.executable, "-m", "dimba", *args], cwd=self.work, env=env, stdout=handle,
                                stderr=subprocess.STDOUT)

    def wait(self, procs: dict[str, subprocess.Popen], timeout: float) -> dict[str, int]:
        deadline, codes = time.time() + timeout, {}
        for name, proc in procs.items():
            try:
                codes[name] = proc.wait(timeout=max(1.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = -9
            log(f"{name}: exit {codes[name]}")
        return codes

    # ------------------------------------------------------------------ phase 1: training
    def fit_args(self, name: str, *extra) -> list:
        """`dimba fit` flags: the run's configs (extra), then the scale (GPU) or tiny (dry run) settings, then
        the time box and the run's folder; a task keeps its own sequence length."""
        seconds = self.train_seconds
        box = f"00:00:{seconds // 60:02d}:{seconds % 60:02d}"
        common = ["--trainer.max_time", box, "--trainer.logger.init_args.save_dir", self.work / "runs",
                  "--trainer.logger.init_args.name", name, "--trainer.default_root_dir", self.work / "runs" / name]
        if self.dry:
            scale = ["--config", CONFIGS / "tiny.yaml", "--trainer.max_steps", 3, "--trainer.accelerator", "cpu"]
        else:
            scale = ["--config", CONFIGS / "gpu" / "scale.yaml"]
        task = ["--data.seq_len", 40] if name.startswith("ps_") else []
        return [*extra, *scale, *common, *task]

    def train(self) -> dict[str, Path]:
        base = ["fit", "--config", CONFIGS / "base.yaml"]
        text = [] if not self.dry else ["--data.source", self.work / "corpus"]
        task = ["--config", CONFIGS / "tasks" / "path_star.yaml"]
        if self.dry:
            task += ["--data.task_options", "{degree: 2, arm_length: 5, n_train: 64, n_test: 16}"]
        runs = {
            "judge": [*base, "--model", CONFIGS / "model" / "ar.yaml", "--model.init_args.net.n_layers", 8,
                      "--seed_everything", 1, *text],
            "ar": [*base, "--model", CONFIGS / "model" / "ar.yaml", *text],
            "masked": [*base, "--model", CONFIGS / "model" / "masked.yaml", *text],
            "dimba": [*base, *text, "--model.init_args.net.block_size", 0],  # the CPU ratios' whole-sequence model
            "ps_ar": [*base, *task, "--model", CONFIGS / "model" / "ar.yaml"],
            "ps_masked": [*base, *task, "--model", CONFIGS / "model" / "masked.yaml"],
            "ps_dimba": [*base, *task],
        }
        if self.block_size:
            runs["dimba_block"] = [*base, *text, "--model.init_args.net.block_size", self.block_size]
        log(f"training {', '.join(runs)} side by side, {self.train_seconds} s each")
        procs = {name: self.start(f"fit_{name}", *self.fit_args(name, *args)) for name, args in runs.items()}
        self.wait(procs, self.train_seconds + (120 if self.dry else 150))
        self.save()
        checkpoints = {name: self.work / "runs" / name / "checkpoints" / "last.ckpt" for name in runs}
        return {name: path for name, path in checkpoints.items() if path.exists()}

    # ------------------------------------------------------------------ phase 2: evaluation
    def evaluate(self, ckpts: dict[str, Path]) -> None:
        if "judge" not in ckpts:
            log("no judge checkpoint: text quality not evaluated")
            return
        prompts = ["--num_prompts", 4, "--prompt_len", 8, "--gen_len", 8] if self.dry else ["--num_prompts", 64]
        source = ["--source", self.work / "corpus"] if self.dry else []
        device = ["--device", "cpu"] if self.dry else []
        procs = {}
        for name in ("ar", "masked", "dimba", "dimba_block"):
            if name not in ckpts:
                continue
            knob = "top_p" if name == "ar" else "temperature"
            procs[f"eval_{name}"] = self.start(
                f"eval_{name}", "eval", "--ckpt_path", ckpts[name], "--judge_ckpt_path", ckpts["judge"], *source,
                *prompts, *device, "--grid", "{steps: [8, 32], sampler: [ddim], reveal: [confidence]}",
                "--ablations", "{}", "--match_entropy", knob, "--batch_size", 64, "--out_dir",
                self.work / "eval" / name)
        for name in ("ps_ar", "ps_masked", "ps_dimba"):
            if name in ckpts:
                procs[f"eval_{name}"] = self.start(
                    f"eval_{name}", "eval", "--task", "true", "--ckpt_path", ckpts[name], *device,
                    "--grid", "{steps: [8, 32], reveal: [random, confidence]}", "--limit", 16 if self.dry else 1000,
                    "--batch_size", 256, "--out_dir", self.work / "eval" / name)
        self.wait(procs, 150 if self.dry else 200)
        self.save()

    # ------------------------------------------------------------------ phase 3: latency
    def latency(self, ckpts: dict[str, Path]) -> None:
        if "dimba" not in ckpts or "ar" not in ckpts:
            log("latency skipped: no DIMBA or AR checkpoint")
            return
        grid = (["--quick", "true", "--device", "cpu"] if self.dry else
                ["--compile", "true", "--compile_mode", "reduce-overhead", "--lengths", "[1024]", "--steps", "[8,32]",
                 "--batches", "[1]", "--repeats", 3])
        proc = self.start("bench", "bench", "--ckpt_path", ckpts["dimba"], "--ar_ckpt_path", ckpts["ar"], *grid,
                          "--out_dir", self.work / "bench")
        self.wait({"bench": proc}, 120 if self.dry else 150)
        self.save()

    # ------------------------------------------------------------------ phase 4: the table
    def summary(self, ckpts: dict[str, Path]) -> dict:
        import torch

        rows = {}
        for name, path in ckpts.items():
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            data = ckpt.get("datamodule_hyper_parameters") or {}
            tokens = ckpt["global_step"] * data.get("batch_size", 0) * data.get("seq_len", 0)
            rows[name] = {"steps": ckpt["global_step"], "tokens": tokens}
            if name.startswith("ps_"):
                n_train = (data.get("task_options") or {}).get("n_train", 50_000)
                rows[name]["epochs"] = ckpt["global_step"] * data.get("batch_size", 0) / n_train
        for name in list(rows):
            results = self.work / "eval" / name / ("task.json" if name.startswith("ps_") else "results.json")
            if not results.exists():
                continue
            found = json.loads(results.read_text())["rows"]
            if name.startswith("ps_"):
                rows[name]["exact_match"] = max(r["exact_match"] for r in found)
            else:
                for r in found:
                    if r.get("matched_by"):
                        rows[name][f"gen_ppl_{'ar' if name == 'ar' else r.get('steps')}"] = r["gen_ppl"]
        ar = rows.get("ar", {}).get("gen_ppl_ar")
        for name in ("masked", "dimba", "dimba_block"):
            for steps in (8, 32):
                value = rows.get(name, {}).get(f"gen_ppl_{steps}")
                if value and ar:
                    rows[name][f"x_ar_{steps}"] = value / ar
        bench = self.work / "bench" / "bench.json"
        if bench.exists():
            rows["latency"] = {f"{r['model']} {r['steps'] or ''}".strip(): r["latency_s"]
                               for r in json.loads(bench.read_text())["generation"]}
        (self.work / "summary.json").write_text(json.dumps(rows, indent=2))
        lines = ["| run | steps | tokens (x target) | gen-PPL 8 / 32 steps | x AR 8 / 32 (CPU at 2000 steps) |"
                 " path-star exact | epochs |", "|---|---|---|---|---|---|---|"]
        for name, r in rows.items():
            if name == "latency":
                continue
            ppl = " / ".join(f"{r[k]:.1f}" for k in ("gen_ppl_8", "gen_ppl_32", "gen_ppl_ar") if k in r)
            ratio = " / ".join(f"{r[k]:.1f}x" for k in ("x_ar_8", "x_ar_32") if k in r)
            cpu = CPU_RATIOS.get(name.replace("_block", ""))
            ratio += f" ({cpu}x)" if cpu and ratio else ""
            lines.append(f"| {name} | {r['steps']} | {r['tokens']:,} ({r['tokens'] / TARGET_TOKENS:.2f}) | {ppl} "
                         f"| {ratio} | {r.get('exact_match', '')} | {r.get('epochs', ''):.3g} |"
                         if "epochs" in r else
                         f"| {name} | {r['steps']} | {r['tokens']:,} ({r['tokens'] / TARGET_TOKENS:.2f}) | {ppl} "
                         f"| {ratio} | | |")
        if "latency" in rows:
            lines += ["", "latency, batch 1: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in rows["latency"].items())]
        (self.work / "summary.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines), flush=True)
        self.save()
        return rows


class Finished:
    """A dry run's command, run to its end in this process; `wait` gives its exit code as Popen's does."""

    def __init__(self, args: list[str], handle):
        import contextlib

        from dimba.cli import main as dimba_main

        with handle, contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
            try:
                dimba_main(args)
                self.code = 0
            except SystemExit as done:
                self.code = done.code if isinstance(done.code, int) else 0
            except Exception as err:  # noqa: BLE001 - logged, and the call goes on with what it has
                print(f"{type(err).__name__}: {err}", file=handle)
                self.code = 1

    def wait(self, timeout: float | None = None) -> int:
        return self.code


def tiny_corpus(folder: Path) -> None:
    """A few kilobytes of verse-like text for the dry run (no download)."""
    import random

    rng = random.Random(0)
    words = ("king queen lord lady sword crown night day love death heart blood fair foul thou thee art doth "
             "hath speak fly stay go come wherefore gentle noble").split()
    folder.mkdir(parents=True, exist_ok=True)
    for d in range(4):
        lines = [" ".join(rng.choice(words) for _ in range(8)).capitalize() + "." for _ in range(300)]
        (folder / f"doc{d}.txt").write_text("\n".join(lines), encoding="utf-8")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="every phase on the CPU, tiny, in about a minute")
    parser.add_argument("--train_seconds", type=int, default=300, help="each training run's time box")
    parser.add_argument("--block_size", type=int, default=4, help="also a block DIMBA with this block (0: none)")
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/gpu_scale_out"))
    parser.add_argument("--work", default="/tmp/gpu_scale")
    args = parser.parse_args(argv)
    call = Call(args)
    if call.dry:
        os.environ.setdefault("DIMBA_CACHE", str(call.work / "cache"))
        os.chdir(call.work)
        tiny_corpus(call.work / "corpus")
    else:
        subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                       stdout=open(call.logs / "gpu.txt", "w"), stderr=subprocess.STDOUT)
    log(f"gpu_scale {'dry run ' if call.dry else ''}at {REPO}")
    ckpts = call.train()
    log(f"trained: {', '.join(sorted(ckpts)) or 'nothing'}")
    call.evaluate(ckpts)
    call.latency(ckpts)
    return call.summary(ckpts)


if __name__ == "__main__":
    main()
