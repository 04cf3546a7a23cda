"""Reasoning-task evaluation: a model trained on a task (`--data.source task:NAME`) answers the held-out test
instances; exact match of the whole answer, accuracy per answer position (node or cell), for path-star the
accuracy on the path's first step (the one node no edge lookup decides), and for Sudoku the share of outputs that
satisfy every constraint."""

from __future__ import annotations

import time

import numpy as np

from dimba.data import sudoku
from dimba.data.tasks import TASK_PREFIX, PathStar, Sudoku6, task_split_arrays, task_tokenizer
from dimba.data.tokenizer import PAD
from dimba.errors import DimbaError
from dimba.eval.quality import fill_all
from dimba.sampling import SamplingConfig
from dimba.training.base import LanguageModelBase


def task_of(model: LanguageModelBase, ckpt: dict) -> tuple[str, dict, int]:
    """(source, task_options, seq_len) the checkpoint was trained on."""
    data = ckpt.get("datamodule_hyper_parameters") or {}
    source = data.get("source")
    if not (isinstance(source, str) and source.startswith(TASK_PREFIX)):
        raise DimbaError(f"the checkpoint was not trained on a task (its data source is {source!r}); "
                         "train with --data.source task:NAME")
    if model.tokenizer.fingerprint != task_tokenizer().fingerprint:
        raise DimbaError("the checkpoint's tokenizer is not the task vocabulary of this version")
    return source, data.get("task_options") or {}, int(data.get("seq_len") or model.seq_len)


def training_progress(ckpt: dict, options: dict) -> dict[str, float]:
    """How far training had gone when the checkpoint was written: optimizer steps, and epochs of the task's
    training split (batches processed x batch size / n_train, as one device saw them)."""
    processed = (ckpt.get("loops") or {}).get("fit_loop", {}).get("epoch_loop.batch_progress", {})
    batches = processed.get("total", {}).get("processed", ckpt.get("global_step", 0))
    batch_size = (ckpt.get("datamodule_hyper_parameters") or {}).get("batch_size") or 0
    n_train = options.get("n_train", 50_000)
    return {"step": int(ckpt.get("global_step", 0)), "epochs": round(batches * batch_size / n_train, 3)}


def answer_accuracy(predicted: np.ndarray, tokens: np.ndarray, given: np.ndarray) -> dict[str, float]:
    """Exact match of the answer (every position not given) and accuracy per answer position."""
    answer = ~given
    correct = (predicted == tokens) | given
    return {"exact_match": float(correct.all(1).mean()),
            "position_accuracy": float(((predicted == tokens) & answer).sum() / max(answer.sum(), 1))}


# What the baselines score, in the order they give it (Sudoku's baselines give the first two).
BASELINE_SCORES = ("position_accuracy", "exact_match", "first_step_accuracy")
# What a learning curve plots, one panel each (the metrics some row has), with the panel's axis name.
CURVE_METRICS = {"exact_match": "exact match", "position_accuracy": "accuracy per answer position",
                 "first_step_accuracy": "accuracy on the first step off the centre"}


def first_step_index(question: list[str], answer: list[str]) -> int:
    """Where the centre's neighbour on the path (the goal arm's first node) stands in a path-star answer: the
    decision among the arms that no edge lookup from the centre makes, the step a left-to-right model trained by
    teacher forcing fails (Bachmann & Nagarajan, 2024). In the reversed task's answer it is the last node but one."""
    return 1 if answer[0] == question[-3] else len(answer) - 2


def path_star_baselines(question: list[str], answer: list[str]) -> dict[str, tuple[float, float, float]]:
    """Expected (accuracy per answer node, exact match, accuracy on the first step) of two guessers on one
    path-star instance: the path along a random arm from the start (the centre), and the ends copied from the
    question with the nodes between drawn among the graph's other nodes. Works for the reversed task too (its
    answer runs from the goal)."""
    edges = [(question[i], question[i + 1]) for i in range(0, len(question) - 4, 3)]
    start = question[-3]
    neighbours: dict[str, list[str]] = {}
    for u, v in edges:
        neighbours.setdefault(u, []).append(v)
    arms = []
    for first in neighbours.get(start, []):
        path = [start, first]
        while path[-1] in neighbours:
            path.append(neighbours[path[-1]][0])
        arms.append(path if answer[0] == start else path[::-1])
    accuracy = lambda guess: sum(g == t for g, t in zip(guess, answer, strict=False)) / len(answer)
    nodes = {n for edge in edges for n in edge}
    middle = 1 / max(1, len(nodes) - 2)
    ends = (2 + middle * (len(answer) - 2)) / len(answer)
    first = first_step_index(question, answer)
    return {"random arm": (float(np.mean([accuracy(a) for a in arms])), float(np.mean([a == answer for a in arms])),
                           float(np.mean([a[first] == answer[first] for a in arms]))),
            "copy ends": (ends, middle ** (len(answer) - 2), middle)}


def sudoku_valid_share(predicted: np.ndarray, vocab: list[str]) -> float:
    """Share of outputs whose solution part (after the 37 puzzle tokens) is a valid grid."""
    return float(np.mean([Sudoku6.satisfies_constraints([vocab[t] for t in row[37:73]]) for row in predicted]))


class TaskEval:
    """The test split of a task (its first `limit` instances); `row` scores one sampling setting."""

    def __init__(self, source: str, options: dict, seq_len: int, cache, limit: int | None = None):
        arrays = task_split_arrays(source, options, seq_len, cache)
        self.source, self.options = source, options
        self.tokens, self.given = arrays["test_tokens"][:limit], arrays["test_given"][:limit]
        ids = task_tokenizer().hf.get_vocab()  # token -> id
        self.vocab = [None] * len(ids)  # id -> token
        for tok, i in ids.items():
            self.vocab[i] = tok
        # Path-star: each test answer's first step off the centre, as a position in its row (N,).
        self.first_step_at = None if source != TASK_PREFIX + PathStar.name else np.array(
            [np.flatnonzero(~self.given[i])[first_step_index(*self.words(i))] for i in range(len(self.tokens))],
            dtype=np.int64)

    def words(self, i: int) -> tuple[list[str], list[str]]:
        """(question words, answer words) of test instance i."""
        row, given = self.tokens[i], self.given[i]
        question = [self.vocab[t] for t, g in zip(row, given, strict=True) if g and self.vocab[t] != PAD]
        return question, [self.vocab[t] for t, g in zip(row, given, strict=True) if not g]

    def baseline_rows(self) -> list[dict]:
        """What needs no learning, scored on the same instances (expected values): on path-star, a random arm from
        the start and copying the ends (start and goal, the nodes between guessed among the graph's other nodes);
        on Sudoku, a uniform digit per blank, a digit among those the givens allow, and singles propagation."""
        scores: dict[str, list[tuple[float, ...]]] = {}
        for i in range(len(self.tokens)):
            question, answer = self.words(i)
            if self.source == TASK_PREFIX + Sudoku6.name:
                puzzle = Sudoku6.digits(question[:36])
                blanks = iter(Sudoku6.digits(answer))  # the answer is the solution's blank cells, in order
                solution = [v or next(blanks) for v in puzzle]
                for name, score in sudoku.baselines(puzzle, solution).items():
                    scores.setdefault(name, []).append(score)
                continue
            for name, score in path_star_baselines(question, answer).items():
                scores.setdefault(name, []).append(score)
        return [{"label": f"baseline: {name}", "model": "baseline", "examples": len(v),
                 **dict(zip(BASELINE_SCORES, np.mean(v, axis=0).tolist(), strict=False))} for name, v in scores.items()]

    def first_step_accuracy(self, predicted: np.ndarray) -> float:
        """Share of path-star answers (predicted: (N, L) token ids) whose first step off the centre is right."""
        rows = np.arange(len(self.tokens))
        return float((predicted[rows, self.first_step_at] == self.tokens[rows, self.first_step_at]).mean())

    def row(self, model: LanguageModelBase, cfg: SamplingConfig, batch_size: int) -> dict:
        """Exact match, position accuracy (and Sudoku validity), seconds per example, one decoded example."""
        tokens, given, vocab = self.tokens, self.given, self.vocab
        began = time.perf_counter()
        predicted = np.asarray(fill_all(model, tokens.tolist(), given.tolist(), cfg, batch_size))
        row = {"label": model.describe(cfg), "model": model.kind, **cfg.as_dict(),
               **answer_accuracy(predicted, tokens, given), "examples": len(tokens),
               "seconds_per_example": (time.perf_counter() - began) / len(tokens)}
        if self.source == TASK_PREFIX + Sudoku6.name:
            row["valid_solutions"] = sudoku_valid_share(predicted, vocab)
        if self.first_step_at is not None:
            row["first_step_accuracy"] = self.first_step_accuracy(predicted)
        row["sample"] = {"question": " ".join(vocab[t] for t, g in zip(tokens[0], given[0], strict=True) if g),
                         "answer": " ".join(vocab[t] for t, g in zip(predicted[0], given[0], strict=True) if not g),
                         "truth": " ".join(vocab[t] for t, g in zip(tokens[0], given[0], strict=True) if not g)}
        return row


def plot_task_rows(rows: list[dict], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    labels = [r["label"] for r in rows]
    ax.barh(range(len(rows)), [r["exact_match"] for r in rows], color="C0", label="exact match")
    ax.barh(range(len(rows)), [r["position_accuracy"] for r in rows], color="C1", alpha=0.35,
            label="position accuracy")
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.set_xlim(0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_learning_curves(runs: dict[str, list[dict]], path) -> None:
    """Exact match, accuracy per answer position and (path-star) accuracy on the first step against training
    epochs, one panel each: one colour per run and decoding setting, the first run's baselines as grey lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for run in runs.values() for r in run]
    metrics = [m for m in CURVE_METRICS if any(m in r for r in rows)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4), sharex=True, squeeze=False)
    panels = dict(zip(metrics, axes[0], strict=True))
    colour = 0
    for run, run_rows in runs.items():
        learned = [r for r in run_rows if r["model"] != "baseline"]
        for label in dict.fromkeys(r["label"] for r in learned):
            points = sorted((r for r in learned if r["label"] == label), key=lambda r: r["epochs"])
            name = f"{run}: {label}" if len(runs) > 1 else label
            for key, ax in panels.items():
                shown = [r for r in points if key in r]
                ax.plot([r["epochs"] for r in shown], [r[key] for r in shown], "o-", ms=3,
                        color=f"C{colour % 10}", label=name)
            colour += 1
    first = next(iter(runs.values()))
    for style, r in zip(("--", ":", "-.", (0, (1, 3))), [r for r in first if r["model"] == "baseline"], strict=False):
        for key, ax in panels.items():
            if key in r:
                ax.axhline(r[key], color="grey", ls=style, lw=1, label=r["label"])
    for key, ax in panels.items():
        ax.set_xlabel("training epochs")
        ax.set_ylabel(CURVE_METRICS[key])
        ax.set_ylim(0, 1)
    axes[0][-1].legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def task_table(rows: list[dict]) -> str:
    keys = ["label", "step", "epochs", "exact_match", "position_accuracy", "first_step_accuracy", "valid_solutions",
            "examples", "seconds_per_example"]
    keys = [k for k in keys if any(k in r for r in rows)]
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)
    return ("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n"
            + "".join("| " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |\n" for r in rows))
