"""Reasoning tasks: deterministic generators, unique Sudoku solutions, no test instance in training, the task
data source through the CLI, and `dimba eval --task`."""

import json
import random

import numpy as np
import pytest
import torch

from dimba.data.tasks import PathStar, Sudoku6, make_split, task_split_arrays, task_tokenizer
from dimba.errors import DimbaError
from tests.helpers import CONFIGS, assert_clean_failure, ckpt_dir, dimba, dimba_in_process, fit_args


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


def test_sudoku_puzzles_have_one_solution_and_propagation_cannot_finish_them():
    from dimba.data import sudoku

    task = Sudoku6()
    rng = random.Random(0)
    for _ in range(12):  # bases and their symmetric variants
        ex = task.example(rng)
        puzzle, solution = task.grids(ex)
        assert sudoku.count_solutions(list(puzzle)) == 1 and sudoku.satisfies_constraints(solution)
        assert 0 in sudoku.propagate(puzzle)  # needs more than naked and hidden singles
        assert all(p in (0, s) for p, s in zip(puzzle, solution, strict=True))
        assert [ex.given[37 + i] for i in range(36)] == [v > 0 for v in puzzle]
    assert not Sudoku6.satisfies_constraints(["d1"] * 36)


def test_propagation_finishes_what_singles_can_and_the_classes_see_through_symmetry():
    from dimba.data import sudoku

    rng = random.Random(1)
    solution = sudoku.random_solution(rng)
    easy = [v if i % 3 else 0 for i, v in enumerate(solution)]  # a third blank: singles finish it
    assert sudoku.propagate(easy) == solution
    puzzle, _ = sudoku.hard_puzzle(rng)
    variant, variant_solution = sudoku.random_symmetry(puzzle, solution, rng)
    assert sudoku.symmetry_class(variant_solution) == sudoku.symmetry_class(solution)
    assert sudoku.satisfies_constraints(variant_solution)
    assert len({sudoku.symmetry_class(sudoku.random_solution(rng)) for _ in range(300)}) > 20  # dozens of classes


@pytest.mark.parametrize("task", [PathStar(degree=2), Sudoku6()])
def test_no_test_or_val_instance_is_in_training(task):
    train, val, test = make_split(task, 60, 20, seed=0, n_val=10)
    test_keys, val_keys = {task.key(ex) for ex in test}, {task.key(ex) for ex in val}
    assert len(test_keys) == 20 and len(val_keys) == 10 and not test_keys & val_keys
    assert not any(task.key(ex) in test_keys | val_keys for ex in train)
    again = make_split(task, 60, 20, seed=0, n_val=10)
    assert [ex.tokens for ex in again[0]] == [ex.tokens for ex in train]


def test_sudoku_train_and_test_share_no_symmetry_class():
    """Under the grid's symmetries no test solution is a training solution seen differently (it was, with a
    split by digit relabelling only)."""
    from dimba.data import sudoku

    task = Sudoku6()
    train, val, test = make_split(task, 60, 20, seed=0, n_val=10)
    classes = lambda examples: {sudoku.symmetry_class(task.grids(ex)[1]) for ex in examples}
    assert classes(test) and not classes(test) & classes(train + val)


def test_task_reports_show_the_baselines_that_need_no_learning(tmp_path):
    from dimba.eval.tasks import TaskEval

    rows = {r["label"]: r for r in TaskEval("task:path_star", {"n_train": 20, "n_test": 200}, 40, tmp_path)
            .baseline_rows()}
    assert abs(rows["baseline: random arm"]["exact_match"] - 0.5) < 1e-9
    assert abs(rows["baseline: random arm"]["position_accuracy"] - 7 / 12) < 1e-9
    assert abs(rows["baseline: copy ends"]["position_accuracy"] - 11 / 27) < 1e-9  # (2 + 4 / 9) / 6
    assert abs(rows["baseline: random arm"]["first_step_accuracy"] - 0.5) < 1e-9  # one arm of two
    assert abs(rows["baseline: copy ends"]["first_step_accuracy"] - 1 / 9) < 1e-9  # one of the 9 other nodes
    sudoku_rows = {r["label"]: r for r in TaskEval("task:sudoku6", {"n_train": 10, "n_test": 10, "n_val": 1}, 80,
                                                   tmp_path).baseline_rows()}
    uniform, allowed, propagated = (sudoku_rows[f"baseline: {k}"]["position_accuracy"]
                                    for k in ("uniform", "allowed digits", "propagation"))
    assert uniform == pytest.approx(1 / 6) and uniform < allowed < propagated < 1


@pytest.mark.parametrize("reverse", [False, True])
def test_the_first_step_off_the_centre_is_scored_apart(tmp_path, reverse):
    """Path-star's one hard node: the goal arm's first node (second in the answer, or last but one reversed).
    A wrong first step alone leaves 5 of 6 nodes right, exact match 0 and first-step accuracy 0."""
    from dimba.eval.tasks import TaskEval, answer_accuracy

    task = TaskEval("task:path_star", {"n_train": 20, "n_test": 50, "reverse": reverse}, 40, tmp_path)
    truth = task.tokens.copy()
    assert task.first_step_accuracy(truth) == 1.0
    wrong = truth.copy()
    for i in range(len(truth)):
        answer = np.flatnonzero(~task.given[i])
        at = answer[-2] if reverse else answer[1]
        wrong[i, at] = truth[i, answer[0]]  # the answer's first node, never its first step
    assert task.first_step_accuracy(wrong) == 0.0
    scores = answer_accuracy(wrong, truth, task.given)
    assert scores["exact_match"] == 0.0 and scores["position_accuracy"] == pytest.approx(5 / 6)
    # Every other position wrong instead: the first step still counts as right.
    others = np.where(task.given, truth, (truth + 1) % 60)
    for i in range(len(truth)):
        at = np.flatnonzero(~task.given[i])[-2 if reverse else 1]
        others[i, at] = truth[i, at]
    assert task.first_step_accuracy(others) == 1.0


def test_an_unknown_word_in_a_task_prompt_is_refused():
    tok = task_tokenizer()
    assert tok.encode("n3 n4 , / n3 n4 =") == [tok.hf.token_to_id(w) for w in "n3 n4 , / n3 n4 =".split()]
    with pytest.raises(DimbaError, match="unknown word 'cat'"):
        tok.encode("n3 cat =")


def test_task_arrays_are_padded_cached_and_checked(tmp_path):
    arrays = task_split_arrays("task:path_star", {"n_train": 40, "n_test": 8, "n_val": 4}, 48, tmp_path)
    assert arrays["train_tokens"].shape == (40, 48) and arrays["test_given"].dtype == bool
    assert arrays["val_tokens"].shape == (4, 48) and arrays["test_tokens"].shape == (8, 48)
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
    options = json.dumps({"degree": 2, "n_train": 64, "n_test": 8, "n_val": 8})
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
    baselines, rows = rows[:2], rows[2:]
    assert [r["label"] for r in baselines] == ["baseline: random arm", "baseline: copy ends"]
    assert rows and all(0 <= r["exact_match"] <= r["position_accuracy"] + 1e-9 <= 1 + 1e-9 for r in rows)
    assert all(0 <= r["first_step_accuracy"] <= 1 for r in rows) and "first_step_accuracy" in baselines[0]
    # The committing samplers (masked diffusion, the default hybrid DIMBA): random and confidence-first reveal.
    assert (model != "ar") == (len(rows) == 2)
    assert "baseline: copy ends" in (out / "task.md").read_text()
    assert rows[0]["sample"]["truth"].count("n") == 6 and (out / "task.png").exists()


def test_eval_task_refuses_a_text_model(trained):
    result = dimba_in_process("eval", "--task", "true", "--ckpt_path", trained)
    assert result.returncode == 2 and "was not trained on a task" in result.stderr


def test_a_learning_curve_evaluates_every_checkpoint_in_training_order(workdir, tmp_path):
    options = {"degree": 2, "n_train": 64, "n_test": 8, "n_val": 8}
    args = fit_args(tmp_path, "curve", "--model", CONFIGS / "model" / "masked.yaml", "--data.task_options",
                    json.dumps(options), "--data.seq_len", 40, "--data.batch_size", 8, "--trainer.max_steps", 2,
                    "--trainer.logger.init_args.name", "curve", "--model.init_args.net.d_model", 32,
                    "--model.init_args.net.n_layers", 1, "--model.init_args.net.headdim", 16,
                    config=("base.yaml", "tasks/path_star.yaml"), model=None)
    args[args.index("--data.source") + 1] = "task:path_star"
    assert (result := dimba(*args, cwd=workdir)).returncode == 0, result.stderr[-3000:]
    folder = ckpt_dir(tmp_path, "curve", "curve")
    ckpt = torch.load(folder / "last.ckpt", weights_only=False)
    for step in (16, 4):  # written later than it trained: the order is the training step, not the name or time
        ckpt["global_step"] = step
        ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["processed"] = step
        torch.save(ckpt, folder / f"step={step}.ckpt")
    grid = ("--grid", "{steps: [2], reveal: [confidence]}", "--limit", 8)
    for name in ("a", "b"):
        evaluated = dimba_in_process("eval", "--task", "true", "--ckpt_path", folder / "step=*.ckpt", *grid,
                                     "--out_dir", tmp_path / name)
        assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    rows = [r for r in json.loads((tmp_path / "a" / "task.json").read_text())["rows"] if r["model"] != "baseline"]
    assert [(r["checkpoint"], r["step"], r["epochs"]) for r in rows] == [("step=4.ckpt", 4, 0.5),
                                                                         ("step=16.ckpt", 16, 2.0)]
    assert "| 16 | 2 |" in (tmp_path / "a" / "task.md").read_text()
    compared = dimba_in_process("compare", "--runs", f"[{tmp_path / 'a'},{tmp_path / 'b'}]", "--out",
                                tmp_path / "curves.png")
    assert compared.returncode == 0 and (tmp_path / "curves.png").exists(), compared.stderr[-3000:]
    assert compared.stdout.count("| 16 | 2 |") == 2 and "| 4 |" not in compared.stdout  # each run's last checkpoint
    assert_clean_failure(dimba_in_process("compare", "--runs", f"[{tmp_path / 'a'}]", "--row", "x", "--out",
                                          tmp_path / "row.png"), "task evaluations compare as learning curves")
    assert_clean_failure(dimba_in_process("eval", "--task", "true", "--ckpt_path", folder / "nothing*.ckpt",
                                          "--out_dir", tmp_path / "c"), "matches no file")
    assert_clean_failure(dimba_in_process("eval", "--ckpt_path", folder / "step=*.ckpt", "--judge_ckpt_path",
                                          folder / "last.ckpt", "--out_dir", tmp_path / "d"),
                         "text evaluation takes one")
