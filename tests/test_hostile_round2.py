"""The second round of hostile input (issue #22), one group per class of failure: code from a checkpoint, files
erased, hangs, memory from one line, tracebacks instead of one line, work lost at the end, and concurrency. Each
case ran into the failure it names on the code before the fix."""

import fcntl
import json
import os
import pickle

import pytest
import torch

import dimba
from dimba.errors import DimbaError
from tests.helpers import CONFIGS, assert_clean_failure, dimba_in_process, fit_args, jsonl


def predict(ckpt, *args):
    return dimba_in_process("predict", "--ckpt_path", ckpt, *args)


def saved_with(trained, tmp_path, name, change) -> str:
    """A copy of the tiny checkpoint with `change(ckpt_dict)` applied."""
    ckpt = torch.load(trained, map_location="cpu", weights_only=True)
    change(ckpt)
    path = tmp_path / name
    torch.save(ckpt, path)
    return path


class RunsCode:
    """Unpickling this runs a shell command (what a crafted checkpoint would do)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


# ------------------------------------------------------------------ 1. no code runs from a checkpoint
@pytest.mark.parametrize("verb", ["fit", "validate", "test"])
def test_a_checkpoint_url_is_refused_before_anything_is_fetched(workdir, verb):
    args = fit_args(workdir, f"url_{verb}", "--ckpt_path", "http://127.0.0.1:9/x.ckpt")
    args[0] = verb
    assert_clean_failure(dimba_in_process(*args), "checkpoints are read from local files only, not from http://")
    for path in ("https://example.org/x.ckpt", "s3://bucket/x.ckpt"):
        with pytest.raises(DimbaError, match="local files only"):
            dimba.load(path)
    assert_clean_failure(predict("http://127.0.0.1:9/x.ckpt"), "local files only")


def test_a_checkpoint_carrying_code_is_refused_in_one_line_and_never_run(trained, workdir, tmp_path):
    marker = tmp_path / "ran"
    evil = saved_with(trained, tmp_path, "evil.ckpt", lambda c: c.update(payload=RunsCode(marker)))
    fit = fit_args(workdir, "evil_fit", "--ckpt_path", evil)
    for result in (dimba_in_process(*fit), predict(evil), dimba_in_process("export", "--ckpt_path", evil, "--out_dir",
                                                                           tmp_path / "evil_export")):
        assert_clean_failure(result, "holds objects other than plain data")
        assert "weights_only=False" not in result.stderr and "weights_only` set to `False`" not in result.stderr
    assert not marker.exists()
    pickle.loads(pickle.dumps(RunsCode(tmp_path / "control")))  # the payload is live: plain unpickling runs it
    assert (tmp_path / "control").exists()


@pytest.mark.parametrize("class_path", ["dimba.__main__.main", "os.system", "dimba.cli.main", "builtins.eval"])
def test_a_checkpoint_naming_a_module_outside_the_model_kinds_imports_nothing(trained, workdir, tmp_path, class_path):
    """`dimba.__main__` runs the CLI when imported: loading such a checkpoint used to do it."""
    bad = saved_with(trained, tmp_path, "class.ckpt", lambda c: c["hyper_parameters"].update(_class_path=class_path))
    with pytest.raises(DimbaError, match="not a model kind of this version"):
        dimba.load(bad, device="cpu")
    assert_clean_failure(dimba_in_process(*fit_args(workdir, "class_fit", "--ckpt_path", bad)), "not a model kind")


# ------------------------------------------------------------------ 2. no file is erased
@pytest.mark.parametrize("content", ["MY DIARY\n", '{"id": 1, "label": "cat"}\n{"id": 2, "label": "dog"}\n',
                                     "no newline at the end", '{"prompt": "x", "completion": "y"}\nNOT OURS\n'
                                     '{"prompt": "z", "completion": "w"}\n'],
                         ids=["notes", "another_tools_jsonl", "one_line", "bad_line_in_the_middle"])
def test_predict_never_overwrites_a_file_it_did_not_write(trained, tmp_path, content):
    out = tmp_path / "precious.txt"
    out.write_text(content)
    assert_clean_failure(predict(trained, "--prompt", "x", "--output", out, "--length", 2, "--sampling.steps", 1),
                         "is not a `dimba predict` results file")
    assert out.read_text() == content
    forced = predict(trained, "--prompt", "x", "--output", out, "--length", 2, "--sampling.steps", 1,
                     "--overwrite", "true")
    assert forced.returncode == 0 and [r["prompt"] for r in jsonl(out)] == ["x"]


def test_predict_does_not_write_through_a_symlink(trained, tmp_path):
    target = tmp_path / "elsewhere.jsonl"
    target.write_text('{"prompt": "x", "completion": "mine"}\n')
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    assert_clean_failure(predict(trained, "--prompt", "x", "--output", link, "--length", 2), "is a symbolic link")
    assert target.read_text() == '{"prompt": "x", "completion": "mine"}\n'


def test_eval_refuses_an_out_dir_holding_other_files(trained, trained_ar, tmp_path):
    export = tmp_path / "export"
    assert dimba_in_process("export", "--ckpt_path", trained, "--out_dir", export).returncode == 0
    before = {p.name: p.read_bytes() for p in export.iterdir()}
    result = dimba_in_process("eval", "--ckpt_path", trained, "--judge_ckpt_path", trained_ar, "--out_dir", export)
    assert_clean_failure(result, "holds files `dimba eval` did not write (README.md, config.json")
    assert {p.name: p.read_bytes() for p in export.iterdir()} == before
    assert dimba.load(export, device="cpu").complete("The king", length=2, steps=1)


def test_bench_compare_and_curves_refuse_to_overwrite_what_they_did_not_write(tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep me")
    assert_clean_failure(dimba_in_process("bench", "--quick", "true", "--out_dir", notes),
                         "holds files `dimba bench` did not write (todo.txt)")
    runs = tmp_path / "eval_a"
    runs.mkdir()
    row = {"label": "DIMBA, 32 steps", "model": "hybrid", "gen_ppl": 10.0, "entropy_bits": 8.0, "steps": 32}
    (runs / "results.json").write_text(json.dumps({"rows": [row]}))
    page = tmp_path / "results.md"
    page.write_text("# my results page\n")
    result = dimba_in_process("compare", "--runs", f"[{runs}]", "--row", "DIMBA, 32 steps", "--out",
                              tmp_path / "results.png")
    assert_clean_failure(result, "results.md exists and is not an output of `dimba compare`")
    assert page.read_text() == "# my results page\n"
    picture = tmp_path / "curves.png"
    picture.write_text("not a png")
    assert_clean_failure(dimba_in_process("curves", "--runs", f"[{runs}]", "--out", picture),
                         "curves.png exists and is not an output of `dimba curves`")


# ------------------------------------------------------------------ 3. nothing hangs
def test_a_task_with_fewer_instances_than_asked_fails_instead_of_looping(workdir, tmp_path):
    from dimba.data.tasks import PathStar, make_split

    with pytest.raises(DimbaError, match=r"fewer distinct instances than its test split needs \(100; 6 found"):
        make_split(PathStar(degree=2, arm_length=1, num_nodes=3), 10, 100, 0)
    args = fit_args(tmp_path, "tiny_task", "--data.task_options",
                    "{degree: 2, arm_length: 1, num_nodes: 3, n_train: 10, n_test: 100}", "--data.seq_len", 16,
                    config=("base.yaml", "tasks/path_star.yaml"), model=None)
    args[args.index("--data.source") + 1] = "task:path_star"
    assert_clean_failure(dimba_in_process(*args), "fewer distinct instances than its test split needs (100")


def test_sudoku_digging_is_bounded(monkeypatch):
    """A Sudoku that cannot be dug to a hard puzzle (here: no blank ever keeps the solution unique) ends with one
    line after its bounded tries, instead of looping."""
    import random

    from dimba.data import sudoku
    from dimba.data.tasks import Sudoku6

    monkeypatch.setattr(sudoku, "count_solutions", lambda grid, limit=2: 2)
    assert sudoku.hard_puzzle(random.Random(0), tries=3) is None
    monkeypatch.setattr(sudoku, "hard_puzzle", lambda rng: None)
    with pytest.raises(DimbaError, match="found no puzzle that propagation cannot finish"):
        Sudoku6().example(random.Random(0))


# ------------------------------------------------------------------ 4. no gigabytes from one line
def test_huge_lengths_are_refused_before_allocating(trained, tmp_path):
    assert_clean_failure(predict(trained, "--infill", "true", "--prompt", "a {{1000000000}} b"),
                         "the gaps ask for 1,000,000,000 tokens, more than the model generates (32 tokens)")
    model = dimba.load(trained, device="cpu")
    with pytest.raises(DimbaError, match="more than .* can generate"):
        model.complete("hi", length=10**9)
    with pytest.raises(DimbaError, match="longer than .* can generate"):
        model.fill([[1] * (model.seq_len + 1)], [[True] + [False] * model.seq_len])


def test_an_export_whose_config_does_not_fit_its_weights_is_refused_before_the_model_is_built(trained, tmp_path):
    export = tmp_path / "export"
    assert dimba_in_process("export", "--ckpt_path", trained, "--out_dir", export).returncode == 0
    config = json.loads((export / "config.json").read_text())
    config["hyper_parameters"]["net"]["d_model"] = 4096
    config["hyper_parameters"]["vocab_size"] = 10**6
    (export / "config.json").write_text(json.dumps(config))
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(DimbaError, match="configuration builds"):
        dimba.load(export, device="cpu")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 500 * 1024  # KiB: far below 16 GB


# ------------------------------------------------------------------ 5. one line, not a traceback
def broken_exports(trained, tmp_path):
    """(name, folder) of export folders broken one way each."""
    good = tmp_path / "good_export"
    assert dimba_in_process("export", "--ckpt_path", trained, "--out_dir", good).returncode == 0
    cases = {"random_safetensors_header": ("model.safetensors", os.urandom(64)),
             "huge_safetensors_header": ("model.safetensors", (2**40).to_bytes(8, "little") + b"{}"),
             "malformed_tokenizer": ("tokenizer.json", b'{"model": 3}'),
             "config_not_a_mapping": ("config.json", b"[1, 2]"),
             "hyper_parameters_wrong_type": ("config.json", json.dumps({"class_path": "dimba.training.dimba_lm.DimbaLM",
                                                                        "hyper_parameters": {"net": "big"}}).encode())}
    import shutil

    for name, (file, content) in cases.items():
        folder = tmp_path / name
        shutil.copytree(good, folder)
        (folder / file).write_bytes(content)
        yield name, folder


def test_broken_checkpoints_and_exports_end_in_one_line(trained, tmp_path):
    empty = tmp_path / "zero.ckpt"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(trained.read_bytes()[:3000])
    wrong = {"vocab_as_text": lambda c: c["hyper_parameters"].update(vocab_size="many"),
             "net_as_text": lambda c: c["hyper_parameters"].update(net="big"),
             "hparams_as_list": lambda c: c.update(hyper_parameters=[1, 2]),
             "class_path_as_list": lambda c: c["hyper_parameters"].update(_class_path=["x"]),
             "warp_as_text": lambda c: c.update(time_warp="fast"),
             "tokenizer_garbage": lambda c: c.update(tokenizer_json="{not json"),
             "state_dict_missing_a_key": lambda c: c["state_dict"].pop(next(iter(c["state_dict"])))}
    paths = [("zero", empty, "not a readable checkpoint"), ("truncated", truncated, "not a readable checkpoint")]
    paths += [(name, saved_with(trained, tmp_path, f"{name}.ckpt", change), "") for name, change in wrong.items()]
    paths += [(name, folder, "") for name, folder in broken_exports(trained, tmp_path)]
    for name, path, message in paths:
        result = predict(path, "--prompt", "x", "--length", 2)
        assert result.returncode == 2 and "Traceback" not in result.stderr, (name, result.stderr[-1500:])
        assert result.stderr.strip().splitlines()[-1].startswith("error: ") and message in result.stderr, name


def test_fit_on_a_truncated_checkpoint_ends_in_one_line(trained, workdir, tmp_path):
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(trained.read_bytes()[:5000])
    assert_clean_failure(dimba_in_process(*fit_args(workdir, "trunc_fit", "--ckpt_path", truncated)),
                         "not a readable checkpoint")


def test_a_spoilt_eval_journal_is_recomputed_not_read_back(trained, trained_ar, workdir, tmp_path):
    out = tmp_path / "eval"
    flags = ["eval", "--ckpt_path", trained, "--judge_ckpt_path", trained_ar, "--source", workdir / "corpus",
             "--num_prompts", 2, "--prompt_len", 8, "--gen_len", 4, "--grid", "{steps: [1]}", "--ablations", "{}",
             "--out_dir", out]
    from dimba.eval.quality import QualityEval

    real_row = QualityEval.model_row
    try:
        QualityEval.model_row = lambda *a: (_ for _ in ()).throw(KeyboardInterrupt)
        assert dimba_in_process(*flags).returncode == 130
    finally:
        QualityEval.model_row = real_row
    journal = json.loads((out / "partial.json").read_text())
    for piece in journal["pieces"].values():
        piece["value"] = [{"label": 5, "gen_ppl": "lots"}]  # wrong types, digest unchanged
    (out / "partial.json").write_text(json.dumps(journal))
    result = dimba_in_process(*flags)
    assert result.returncode == 0 and "do not match their digest" in result.stderr, result.stderr[-1500:]
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert all(isinstance(r["label"], str) and isinstance(r["gen_ppl"], float) for r in rows)
    (out / "partial.json").write_text("{torn")
    (out / "results.json").unlink()
    assert dimba_in_process(*flags).returncode == 0


@pytest.mark.parametrize("options,message", [
    ("{degree: two}", "option degree of task path_star must be a int"),
    ("{arm_length: 2.5}", "option arm_length of task path_star must be a int"),
    ("{reverse: 1}", "option reverse of task path_star must be a bool"),
    ("{n_train: many}", "option n_train of the task split must be a int"),
    ("{colour: red}", "unknown option 'colour' for task path_star"),
])
def test_task_options_of_the_wrong_type_end_in_one_line(tmp_path, options, message):
    args = fit_args(tmp_path, "bad_task", "--data.task_options", options, config=("base.yaml", "tasks/path_star.yaml"),
                    model=None)
    args[args.index("--data.source") + 1] = "task:path_star"
    assert_clean_failure(dimba_in_process(*args), message)


def test_a_text_column_of_numbers_or_nulls(workdir, tmp_path):
    numbers = tmp_path / "numbers.csv"
    numbers.write_text("id,text\n" + "".join(f"{i},{i * 7}\n" for i in range(300)))
    args = fit_args(tmp_path, "numbers", "--trainer.max_steps", 1)
    args[args.index("--data.source") + 1] = numbers
    assert_clean_failure(dimba_in_process(*args), "its values are blank, null or numbers")
    mixed = tmp_path / "mixed.jsonl"
    text = (CONFIGS / "base.yaml").read_text()  # some real text
    rows = [{"text": text}, {"text": 12}, {"text": None}] * 20
    mixed.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = fit_args(tmp_path, "mixed", "--trainer.max_steps", 1)
    args[args.index("--data.source") + 1] = mixed
    result = dimba_in_process(*args)
    assert result.returncode == 0 and "40 of 60 documents" in result.stderr, result.stderr[-2000:]


# ------------------------------------------------------------------ 6. nothing measured is lost at the end
def test_a_one_point_bench_sweep_writes_its_results(tmp_path):
    """Also: the fresh models get a context as long as the generation (160 tokens, past the configs' 128)."""
    out = tmp_path / "bench"
    result = dimba_in_process("bench", "--quick", "true", "--max_length", 256, "--lengths", "[160]", "--batches",
                              "[1]", "--out_dir", out)
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads((out / "bench.json").read_text())
    assert data["length_sweep"]["lengths"] == [256] and data["length_sweep"]["loglog_slope"] is None
    assert {(row["model"], row["length"]) for row in data["generation"]} == {("DIMBA hybrid", 160), ("AR", 160)}


def test_an_interrupted_bench_keeps_what_it_measured(tmp_path, monkeypatch):
    from dimba.eval import bench

    calls = []

    def failing_sweep(model, args):
        calls.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr("dimba.cli.bench.length_sweep", failing_sweep)
    out = tmp_path / "bench"
    assert dimba_in_process("bench", "--quick", "true", "--out_dir", out).returncode == 130
    data = json.loads((out / "bench.json").read_text())
    assert calls and len(data["generation"]) == 4 and set(data["training"]) == {"DIMBA hybrid", "AR"}  # 2 batches x 2
    assert bench.markdown(data).startswith("Machine:")


# ------------------------------------------------------------------ 7. one writer at a time
def test_a_second_predict_on_the_same_output_is_refused(trained, tmp_path):
    out = tmp_path / "shared.jsonl"
    out.write_text("")
    with open(out, "a") as holder:  # another predict holding the output
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX)
        assert_clean_failure(predict(trained, "--prompt", "x", "--output", out, "--length", 2),
                             "another process is writing")
    assert out.read_text() == ""


def test_a_fresh_fit_never_replaces_a_finished_runs_checkpoints(workdir, tmp_path):
    """Seen here: the same `dimba fit` command typed twice replaced a finished 2000-step run's last.ckpt with the new
    run's at its first save (SIGTERM's CheckpointOnStop) and its periodic checkpoints soon after."""
    args = fit_args(tmp_path, "twice", "--trainer.max_steps", 1)
    args[args.index("--data.source") + 1] = workdir / "corpus"
    assert dimba_in_process(*args).returncode == 0
    last = tmp_path / "twice" / "base" / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    assert_clean_failure(dimba_in_process(*args), f"resume it with --ckpt_path {last}")
    assert last.read_bytes() == before
    resumed = dimba_in_process(*[a if a != 1 else 2 for a in args], "--ckpt_path", last)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 2


def test_a_requeued_slurm_job_still_resumes_by_itself(workdir, tmp_path, monkeypatch):
    """Under SLURM, Lightning restores a requeued job from default_root_dir/hpc_ckpt_*.ckpt: not refused."""
    args = fit_args(tmp_path, "requeued", "--trainer.max_steps", 1)
    args[args.index("--data.source") + 1] = workdir / "corpus"
    assert dimba_in_process(*args).returncode == 0
    last = tmp_path / "requeued" / "base" / "checkpoints" / "last.ckpt"
    (tmp_path / "requeued" / "hpc_ckpt_1.ckpt").write_bytes(last.read_bytes())  # what SIGUSR1's requeue writes
    for name, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
                        "SLURM_NODEID": "0"}.items():
        monkeypatch.setenv(name, value)
    again = dimba_in_process(*[a if a != 1 else 2 for a in args])
    assert again.returncode == 0, again.stderr[-2000:]
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 2


def test_a_second_fit_in_the_same_run_folder_is_refused(workdir, tmp_path):
    args = fit_args(tmp_path, "shared", "--trainer.max_steps", 1)
    args[args.index("--data.source") + 1] = workdir / "corpus"
    run_dir = tmp_path / "shared" / "base"
    run_dir.mkdir(parents=True)
    with open(run_dir / ".dimba.lock", "a") as holder:  # another fit running there
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX)
        assert_clean_failure(dimba_in_process(*args), "another run is using")
    assert not (run_dir / "config.yaml").exists()
    assert dimba_in_process(*args).returncode == 0 and (run_dir / "config.yaml").exists()  # the lock is gone
