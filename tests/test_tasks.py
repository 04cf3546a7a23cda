"""Reasoning tasks: deterministic generators, unique Sudoku solutions, no test instance in training, the task
data source through the CLI, and `dimba eval --task`."""

import json
import random

import pytest
import torch

from dimba.data.tasks import PathStar, Sudoku6, make_split, task_split_arrays, task_tokenizer
from dimba.errors import DimbaError
from tests.helpers import CONFIGS, ckpt_dir, dimba, dimba_in_process, fit_args


def test_path_star_instances_are_stars_with_the_path_to_the_goal():
    task = PathStar(degree=3, arm_length=5)
    ex = task.example(random.Random(1))
    assert len(ex.tokens) == task.length and ex.given.count(False) == 6
    question = ex.tokens[:ex.given.index(False)]
    edges = [tuple(question[i:i + 2]) for i in range(0, 45, 3)]
    centre, goal = question[-3], question[-2]
    path = ex.tokens[ex.given.index(False):]
    assert path[0] == centre and path[-1] == goal and len(edges) == 15
    assert all((a, b) in edges for a, b in zip(path, path[1:], strict=False))  # every step is an edge
    reversed_path = PathStar(degree=3, reverse=True).example(random.Random(1)).tokens[-6:]
    assert reversed_path == path[::-1]
    assert task.example(random.Random(1)).tokens == ex.tokens  # seeded: deterministic


def test_sudoku_puzzles_have_one_solution_and_the_right_number_of_givens():
    task = Sudoku6(givens=12)
    for seed in range(5):
        ex = task.example(random.Random(seed))
        puzzle = [int(c[1]) if c != "_" else 0 for c in ex.tokens[:36]]
        assert sum(v > 0 for v in puzzle) == 12 and task.count_solutions(puzzle) == 1
        assert Sudoku6.satisfies_constraints(ex.tokens[37:])
        assert [ex.given[37 + i] for i in range(36)] == [v > 0 for v in puzzle]
    assert not Sudoku6.satisfies_constraints(["d1"] * 36)


@pytest.mark.parametrize("task", [PathStar(degree=2), Sudoku6(givens=18)])
def test_no_test_instance_is_in_training(task):
    train, test = make_split(task, 300, 50, seed=0)
    test_keys = {task.key(ex) for ex in test}
    assert len(test_keys) == 50 and not any(task.key(ex) in test_keys for ex in train)
    again = make_split(task, 300, 50, seed=0)
    assert [ex.tokens for ex in again[0]] == [ex.tokens for ex in train]


def test_task_arrays_are_padded_cached_and_checked(tmp_path):
    arrays = task_split_arrays("task:path_star", {"n_train": 40, "n_test": 8}, 48, tmp_path)
    assert arrays["train_tokens"].shape == (40, 48) and arrays["test_given"].dtype == bool
    tok = task_tokenizer()
    assert (arrays["train_tokens"][:, 40:] == tok.pad_id).all() and arrays["train_given"][:, 40:].all()
    assert len(list((tmp_path / "tasks").glob("*.npz"))) == 1
    with pytest.raises(DimbaError, match="set data.seq_len >= 40"):
        task_split_arrays("task:path_star", {"n_train": 4, "n_test": 2}, 30, tmp_path)
    with pytest.raises(DimbaError, match="unknown task"):
        task_split_arrays("task:chess", {}, 30, tmp_path)
    with pytest.raises(DimbaError, match="unknown option .colour. for task path_star"):
        task_split_arrays("task:path_star", {"colour": 1}, 40, tmp_path)


@pytest.mark.parametrize("model", ["dimba", "masked", "ar"])
def test_train_and_evaluate_on_a_task_through_the_cli(workdir, tmp_path, model):
    kind = {"dimba": [], "masked": ["--model", CONFIGS / "model" / "masked.yaml"],
            "ar": ["--model", CONFIGS / "model" / "ar.yaml"]}[model]
    options = json.dumps({"degree": 2, "n_train": 64, "n_test": 8})
    args = fit_args(tmp_path, model, *kind, "--data.task_options", options,
                    "--data.seq_len", 40, "--data.batch_size", 8, "--trainer.max_steps", 3,
                    "--trainer.logger.init_args.name", model, "--model.init_args.net.d_model", 32,
                    "--model.init_args.net.n_layers", 1, "--model.init_args.net.headdim", 16,
                    config=("base.yaml", "tasks/path_star.yaml"), model=None)
    args[args.index("--data.source") + 1] = "task:path_star"
    result = dimba(*args, cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = ckpt_dir(tmp_path, model, model) / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["datamodule_hyper_parameters"]["source"] == "task:path_star"
    out = tmp_path / f"eval_{model}"
    evaluated = dimba_in_process("eval", "--task", "true", "--ckpt_path", ckpt, "--grid",
                                 "{steps: [2], reveal: [random, confidence]}", "--limit", 8,
                                 "--out_dir", out)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    rows = json.loads((out / "task.json").read_text())["rows"]
    assert rows and all(0 <= r["exact_match"] <= r["position_accuracy"] + 1e-9 <= 1 + 1e-9 for r in rows)
    # The committing samplers (masked diffusion, the default hybrid DIMBA): random and confidence-first reveal.
    assert (model != "ar") == (len(rows) == 2)
    assert rows[0]["sample"]["truth"].count("n") == 6 and (out / "task.png").exists()


def test_eval_task_refuses_a_text_model(trained):
    result = dimba_in_process("eval", "--task", "true", "--ckpt_path", trained)
    assert result.returncode == 2 and "was not trained on a task" in result.stderr
