"""The product as a user runs it: the `dimba` console script, in subprocesses, on local data."""

import json

import pytest
import torch
import yaml

from tests.helpers import CONFIGS, assert_clean_failure, ckpt_dir, dimba, dimba_in_process, fit_args


def test_fit_writes_a_checkpoint_with_tokenizer_and_logs(trained, workdir):
    import torch
    ckpt = torch.load(trained, map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 6  # the last step is saved even though no periodic save fell on it
    assert ckpt["tokenizer_json"] and "time_warp" in ckpt
    assert "current_model_state" in ckpt  # EMA: state_dict holds the average, this the raw weights
    # ...and they are the raw weights: the end-of-training save comes before EMA swaps the average in (it came
    # after, so a run that ended before its first periodic checkpoint resumed from the average).
    assert any(not torch.equal(ckpt["state_dict"][k], ckpt["current_model_state"][k]) for k in ckpt["state_dict"])
    events = list((workdir / "run").rglob("events.out.tfevents*"))
    assert events


def test_predict_prints_a_completion(trained, workdir):
    result = dimba("predict", "--ckpt_path", trained, "--prompt", "The king", "--length", "8", "--sampling.steps", "4",
                   cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("The king") and len(result.stdout.strip()) > len("The king")


@pytest.mark.parametrize("verb", ["validate", "test"])
def test_validate_and_test_a_checkpoint(trained, workdir, verb):
    args = fit_args(workdir, f"{verb}_run", "--ckpt_path", trained)
    args[0] = verb
    result = dimba(*args, cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{'val' if verb == 'validate' else 'test'}/loss" in result.stdout


VERBS = ("fit", "validate", "test", "distill", "predict", "eval", "bench", "export", "compare", "curves",
         "bench-mamba2", "configs")


def test_help_lists_every_verb_and_every_verb_has_help_and_a_config_file():
    overview = dimba_in_process("--help")
    assert overview.returncode == 0 and "Lightning Trainer" not in overview.stdout
    listed = [line.split()[0] for line in overview.stdout.splitlines() if line.startswith("  ")]
    assert listed == list(VERBS)
    for verb in VERBS:
        result = dimba_in_process(verb, "--help")
        usage = result.stdout.splitlines()[0] if result.stdout else ""
        assert result.returncode == 0 and "CONFIG" in result.stdout, verb
        assert usage.startswith(("usage: dimba [options] " + verb, f"usage: dimba {verb} ")), usage
    unknown = dimba_in_process("frobnicate")
    assert unknown.returncode == 2 and "unknown verb 'frobnicate'" in unknown.stderr
    result = dimba_in_process("fit", "--config", CONFIGS / "base.yaml", "--print_config")
    assert result.returncode == 0, result.stderr
    cfg = yaml.safe_load(result.stdout)
    assert cfg["model"]["class_path"] == "dimba.training.hybrid_lm.HybridLM" and cfg["weights_only"] is None
    assert cfg["model"]["init_args"]["net"]["d_model"] == 256 and cfg["data"]["seq_len"] == 128


def test_a_verb_reads_its_flags_from_a_config_file(trained, tmp_path):
    """jsonargparse under every verb: `--config FILE` gives the flags, sampling options nested."""
    settings = tmp_path / "predict.yaml"
    settings.write_text(f"ckpt_path: {trained}\nprompt: The king\nlength: 4\nsampling:\n  steps: 2\n  seed: 3\n")
    from_file = dimba_in_process("predict", "--config", settings)
    from_flags = dimba_in_process("predict", "--ckpt_path", trained, "--prompt", "The king", "--length", 4,
                                  "--sampling.steps", 2, "--sampling.seed", 3)
    assert from_file.returncode == 0 and from_file.stdout == from_flags.stdout != ""


def test_bench_on_a_device_this_machine_lacks_fails_in_one_line():
    # Without checkpoints bench builds fresh models: before, a traceback from the first tensor moved ("Torch not
    # compiled with CUDA enabled"). predict and eval check through load_for_inference (tests/test_api.py).
    assert_clean_failure(dimba_in_process("bench", "--device", "gpu0", "--quick", "true"), "cannot use device 'gpu0'")
    if not torch.cuda.is_available():
        assert_clean_failure(dimba_in_process("bench", "--device", "cuda", "--quick", "true"), "no CUDA GPU")


def every_config():
    for path in sorted(CONFIGS.rglob("*.yaml")):
        group = path.parent.name
        if path.name == "paper.yaml":  # an overlay of the Gaussian model, as its header says
            yield path, ["--config", CONFIGS / "base.yaml", "--model", CONFIGS / "model" / "gaussian.yaml", "--model",
                         path]
        elif group in ("model", "data"):
            yield path, ["--config", CONFIGS / "base.yaml", f"--{group}", path]
        elif path.name != "base.yaml":
            yield path, ["--config", CONFIGS / "base.yaml", "--config", path]
        else:
            yield path, ["--config", path]


@pytest.mark.parametrize("path,args", list(every_config()), ids=lambda v: getattr(v, "name", ""))
def test_every_shipped_config_parses(path, args, capsys):
    from dimba.cli import main
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *map(str, args), "--print_config"])
    assert exit_info.value.code in (0, None)
    assert "model:" in capsys.readouterr().out


@pytest.mark.parametrize("stack,block_size", [
    ([], 4),
    (["--config", CONFIGS / "ar.yaml"], 0),
    (["--config", CONFIGS / "masked.yaml"], 0),
    (["--model", CONFIGS / "model" / "gaussian.yaml"], 0),
    (["--config", CONFIGS / "tasks" / "path_star.yaml"], 0),
    (["--config", CONFIGS / "tasks" / "sudoku6.yaml"], 0),
], ids=["default", "ar", "masked", "gaussian", "path_star", "sudoku6"])
def test_only_the_default_dimba_has_blocks(stack, block_size, capsys):
    """configs/base.yaml's DIMBA is a block model; a stacked config that switches the model kind (jsonargparse keeps
    the init_args the new class also takes) or a reasoning task must not inherit its blocks."""
    from dimba.cli import main
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(CONFIGS / "base.yaml"), *map(str, stack), "--print_config"])
    assert yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]["net"]["block_size"] == block_size


def test_bf16_mixed_on_cpu(workdir):
    """bf16-mixed training through the CLI: every logged loss finite and no step skipped as non-finite."""
    import math

    from tests.helpers import logged_scalars
    result = dimba(*fit_args(workdir, "bf16", "--trainer.precision", "bf16-mixed"), cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (ckpt_dir(workdir, "bf16") / "last.ckpt").exists()
    scalars = logged_scalars(workdir / "bf16")
    losses = [v for _, v in scalars["train/loss"]]
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses)
    assert "train/nonfinite_skipped" not in scalars  # logged only when a step is skipped


def test_ddp_on_cpu_ranks_see_disjoint_shards_and_keep_one_warp(workdir):
    """Two CPU ranks: their first epochs are disjoint halves of the training blocks, and every rank folds in
    every rank's losses, so the learned time warps are equal (a warp window small enough to be used)."""
    record = workdir / "ddp_record"
    steps = 6
    result = dimba(*fit_args(workdir, "ddp", "--trainer.accelerator", "cpu", "--trainer.devices", "2",
                             "--trainer.strategy", "ddp", "--trainer.max_steps", steps,
                             "--model.init_args.time_warp.window", "32",
                             "--trainer.callbacks+=tests.helpers.RecordShards"),
                   cwd=workdir, env_extra={"DIMBA_TEST_RECORD": str(record)})
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((workdir / f"ddp_record.{r}").read_text()) for r in (0, 1)]
    shards = [{tuple(b) for b in r["blocks"]} for r in ranks]
    assert all(len(s) >= 4 * min(steps, r["epoch_batches"]) for s, r in zip(shards, ranks, strict=True))
    assert not shards[0] & shards[1]
    warps = [r["warp"] for r in ranks]
    assert warps[0]["count"] == 2 * 4 * steps and warps[0]["count"] >= 16  # both ranks' pairs, past half a window
    assert warps[0] == warps[1]
    assert sorted(p.name for p in ckpt_dir(workdir, "ddp").iterdir()) == ["last.ckpt"]


# ------------------------------------------------------------------ bad input: one line, non-zero exit
def test_fit_on_a_missing_corpus(workdir):
    args = fit_args(workdir, "bad")
    args[args.index("--data.source") + 1] = workdir / "nowhere"
    assert_clean_failure(dimba_in_process(*args), "error: corpus not found")


def test_fit_on_an_empty_corpus(workdir):
    (workdir / "empty").mkdir(exist_ok=True)
    (workdir / "empty" / "a.txt").write_text("  \n")
    args = fit_args(workdir, "bad")
    args[args.index("--data.source") + 1] = workdir / "empty"
    assert_clean_failure(dimba_in_process(*args), "is empty")


def test_fit_with_a_missing_column(workdir):
    (workdir / "c.jsonl").write_text(json.dumps({"body": "some text " * 50}) + "\n")
    args = fit_args(workdir, "bad")
    args[args.index("--data.source") + 1] = workdir / "c.jsonl"
    assert_clean_failure(dimba_in_process(*args), "no column 'text'")


def test_resume_with_another_tokenizer(trained, workdir):
    args = fit_args(workdir, "other", "--data.tokenizer_vocab_size", "280", "--ckpt_path", trained)
    assert_clean_failure(dimba_in_process(*args), "trained with another tokenizer")


@pytest.mark.slow  # two DDP ranks per kind: the disjoint-shards DDP test runs by default
@pytest.mark.parametrize("kind", ["dimba", "ar"])
def test_ddp_validation_reduces_every_rank(trained, trained_ar, workdir, kind):
    """Two CPU ranks validating one batch each report what one process reports over the same two batches:
    the torchmetrics aggregates are reduced over ranks (rank 0's own values would differ)."""
    ckpt, config, model = ((trained, ("base.yaml",), "gaussian.yaml") if kind == "dimba"
                           else (trained_ar, ("base.yaml", "ar.yaml"), None))
    results = {}
    for name, extra in (("single", ["--trainer.limit_val_batches", "2"]),
                        ("ddp", ["--trainer.limit_val_batches", "1", "--trainer.accelerator", "cpu",
                                 "--trainer.devices", "2", "--trainer.strategy", "ddp"])):
        record = workdir / f"val_{kind}_{name}.json"
        args = fit_args(workdir, f"val_{kind}_{name}", "--ckpt_path", ckpt, *extra,
                        "--trainer.callbacks+=tests.helpers.RecordMetrics", config=config, model=model)
        args[0] = "validate"
        result = dimba(*args, cwd=workdir, env_extra={"DIMBA_TEST_RECORD": str(record)})
        assert result.returncode == 0, result.stderr[-3000:]
        results[name] = json.loads(record.read_text())
    assert set(results["single"]) == set(results["ddp"]) and "val/loss" in results["single"]
    for key, value in results["single"].items():
        assert results["ddp"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def readme_commands() -> list[list[str]]:
    """Every `dimba ...` command of the README's bash blocks, continuation lines joined, comments dropped."""
    import shlex

    from tests.helpers import REPO

    readme = (REPO / "README.md").read_text()
    commands = []
    for block in readme.split("```bash\n")[1:]:
        text = block.split("```", 1)[0].replace("\\\n", " ")
        for line in text.splitlines():
            for part in line.split(" # ")[0].split("&&"):
                words = shlex.split(part)
                if words[:1] == ["dimba"]:
                    commands.append(words[1:])
    return commands


@pytest.mark.parametrize("command", readme_commands(), ids=lambda c: " ".join(c)[:60])
def test_every_readme_command_parses(command, monkeypatch):
    """Each command as the README writes it, up to running it: its flags parse (`--print_config` stops there)."""
    from tests.helpers import REPO

    monkeypatch.chdir(REPO)
    result = dimba_in_process(*command, "--print_config")
    assert result.returncode == 0, result.stderr[-2000:]
