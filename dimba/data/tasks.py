"""Reasoning tasks, generated offline: seeded, deterministic, pure Python, with a small fixed vocabulary (one token
per node, digit or symbol). Each example is a token sequence and a mask of the positions given (the question);
the model writes the others (the answer).

- path_star (Bachmann & Nagarajan 2024, "The pitfalls of next-token prediction"): a star graph of `degree`
  arms of `arm_length` nodes around a centre, node ids drawn from 0..num_nodes-1; the edge list, shuffled, then
  `/ start goal =`, then the path from the start (the centre) to the goal (a leaf). Teacher-forced
  left-to-right models learn a shortcut and stay near 1/degree exact match; `reverse=True` writes the path from
  the goal back to the start (the control that solves it left to right).
- sudoku6: 6x6 Sudoku (2x3 boxes) with a unique solution (checked by a solver), `givens` cells given; the
  puzzle (`_` for a blank), `=`, then the solution, whose given cells are given too. Train and test are split by
  canonical solution grid (digits relabelled so that the first row reads 1..6): no test grid is seen in training.

`make_split(task, n_train, n_test, seed)` builds both splits with a leakage check; `--data.source task:NAME`
and `--data.task_options` use them as training data (`dimba.data.datamodule`).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import random
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers

from dimba.data import sudoku
from dimba.data.tokenizer import EOS, PAD, Tokenizer
from dimba.errors import DimbaError

TASK_PREFIX = "task:"
TASK_VERSION = 2  # 2: Sudoku that propagation cannot finish, split by symmetry class; a validation split

NUM_NODE_TOKENS = 50
SYMBOLS = (",", "/", "=", "_")
VOCAB = [EOS, PAD, *(f"n{i}" for i in range(NUM_NODE_TOKENS)), *(f"d{i}" for i in range(1, 10)), *SYMBOLS]


def task_tokenizer() -> Tokenizer:
    """The fixed task vocabulary as a word-level tokenizer: encode("n3 n7 ,") -> three ids; decode joins with
    spaces."""
    hf = HFTokenizer(models.WordLevel({tok: i for i, tok in enumerate(VOCAB)}, unk_token=PAD))
    hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return Tokenizer(hf)


@dataclass
class Example:
    tokens: list[str]
    given: list[bool]


class PathStar:
    name = "path_star"

    def __init__(self, degree: int = 2, arm_length: int = 5, num_nodes: int = NUM_NODE_TOKENS, reverse: bool = False):
        if degree < 2 or arm_length < 1:
            raise DimbaError(f"path_star needs degree >= 2 and arm_length >= 1, got {degree}, {arm_length}")
        if not 1 + degree * arm_length <= num_nodes <= NUM_NODE_TOKENS:
            raise DimbaError(f"path_star with degree {degree} and arm_length {arm_length} needs "
                             f"{1 + degree * arm_length} to {NUM_NODE_TOKENS} nodes, got {num_nodes}")
        self.degree, self.arm_length, self.num_nodes, self.reverse = degree, arm_length, num_nodes, reverse

    @property
    def length(self) -> int:
        edges = self.degree * self.arm_length
        return 3 * edges + 4 + self.arm_length + 1

    def example(self, rng: random.Random) -> Example:
        nodes = rng.sample(range(self.num_nodes), 1 + self.degree * self.arm_length)
        centre, arms = nodes[0], [nodes[1 + a * self.arm_length:1 + (a + 1) * self.arm_length]
                                  for a in range(self.degree)]
        edges = [(u, v) for arm in arms for u, v in zip([centre, *arm[:-1]], arm, strict=True)]
        rng.shuffle(edges)
        goal_arm = arms[rng.randrange(self.degree)]
        path = [centre, *goal_arm]
        if self.reverse:
            path = path[::-1]
        question = [tok for u, v in edges for tok in (f"n{u}", f"n{v}", ",")]
        question += ["/", f"n{centre}", f"n{goal_arm[-1]}", "="]
        return Example(question + [f"n{p}" for p in path], [True] * len(question) + [False] * len(path))

    def key(self, ex: Example) -> tuple:
        """What makes two instances the same: the graph and the query (the edge order aside)."""
        question = [t for t, g in zip(ex.tokens, ex.given, strict=True) if g]
        edges = frozenset(tuple(question[i:i + 2]) for i in range(0, len(question) - 4, 3))
        return edges, tuple(question[-3:-1])


class Sudoku6:
    """6x6 Sudoku that singles propagation cannot finish (`dimba.data.sudoku`): each base puzzle is dug from a random
    solution until naked and hidden singles stop short (unique solution checked), then seen under AUGMENT random
    symmetries of the grid (rows, columns, digits). Train and test are split by the solution's symmetry class: no
    test grid is a training grid seen differently."""

    name = "sudoku6"
    length = 36 + 1 + 36
    AUGMENT = 10  # symmetric variants per base puzzle (a base puzzle costs about 0.1-0.3 s to dig)

    def __init__(self):
        # Per random stream (weakly: a stream gone is forgotten): [base puzzle and solution, variants drawn].
        self._bases: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def example(self, rng: random.Random) -> Example:
        state = self._bases.setdefault(rng, [None, self.AUGMENT])
        if state[1] >= self.AUGMENT:
            found = sudoku.hard_puzzle(rng)
            if found is None:
                raise DimbaError("sudoku6 found no puzzle that propagation cannot finish; this should not happen")
            state[:] = [found, 0]
        state[1] += 1
        puzzle, solution = sudoku.random_symmetry(*state[0], rng)
        cells = [f"d{v}" if v else "_" for v in puzzle]
        return Example(cells + ["="] + [f"d{v}" for v in solution], [True] * 37 + [v > 0 for v in puzzle])

    @staticmethod
    def digits(cells: list[str]) -> list[int]:
        """The digits of cell words ("d4" -> 4), 0 for a blank ("_")."""
        return [int(t[1]) if t != "_" else 0 for t in cells]

    @staticmethod
    def grids(ex: Example) -> tuple[list[int], list[int]]:
        """(puzzle, solution) of an example, 0 for a blank."""
        return Sudoku6.digits(ex.tokens[:36]), Sudoku6.digits(ex.tokens[37:73])

    def key(self, ex: Example) -> tuple:
        """What makes two instances the same: the puzzle and its solution."""
        return tuple(ex.tokens)

    def held_out(self, ex: Example) -> bool:
        """Whether the example's solution grid belongs to a test class (about a fifth of the 48 classes, chosen
        by a hash of the canonical form)."""
        canonical = sudoku.symmetry_class(self.grids(ex)[1])
        return int(hashlib.sha256(str(canonical).encode()).hexdigest(), 16) % 5 == 0

    @staticmethod
    def satisfies_constraints(cells: list[str]) -> bool:
        """Whether 36 cells form a valid Sudoku grid (each row, column and box holds d1..d6 once)."""
        if len(cells) != 36 or any(c not in {f"d{i}" for i in range(1, 7)} for c in cells):
            return False
        return sudoku.satisfies_constraints([int(c[1]) for c in cells])


TASKS = {"path_star": PathStar, "sudoku6": Sudoku6}


def check_option_types(what: str, options: dict, defaults: dict) -> None:
    """Each option of the type of its default (an int is not a bool, a bool not an int): one line otherwise, not
    a traceback from deep inside a generator."""
    for name, value in options.items():
        if name not in defaults:
            raise DimbaError(f"unknown option {name!r} for {what}; options: {', '.join(defaults)}")
        kind = type(defaults[name])
        ok = isinstance(value, bool) if kind is bool else (isinstance(value, kind) and not isinstance(value, bool))
        if not ok:
            raise DimbaError(f"option {name} of {what} must be a {kind.__name__}, got {value!r}")


def build_task(name: str, options: dict | None = None):
    if name not in TASKS:
        raise DimbaError(f"unknown task {name!r}; tasks: {', '.join(TASKS)}")
    options = options or {}
    if not isinstance(options, dict):
        raise DimbaError(f"task options must be a mapping, got {options!r}")
    defaults = {k: p.default for k, p in inspect.signature(TASKS[name].__init__).parameters.items() if k != "self"}
    check_option_types(f"task {name}", options, defaults)
    return TASKS[name](**options)


def make_split(task, n_train: int, n_test: int, seed: int, n_val: int = 0
               ) -> tuple[list[Example], list[Example], list[Example]]:
    """(train, val, test), no instance in two of them, each split from its own seeded stream. A task with a
    `held_out(example)` rule (Sudoku: by symmetry class) draws test from what it holds out and train and val from
    the rest; otherwise test comes first and train and val leave out its instances (the leakage check)."""
    if n_train < 1 or n_test < 1 or n_val < 0:
        raise DimbaError(f"a task split needs n_train, n_test >= 1 and n_val >= 0, got {n_train}, {n_test}, {n_val}")
    held_out = getattr(task, "held_out", None)

    def draw(stream: str, n: int, keep, seen: set) -> list[Example]:
        rng, out, attempts = random.Random(f"{task.name}:{stream}:{seed}"), [], 0
        while len(out) < n:
            attempts += 1
            if attempts > 20 * n + 1000:
                raise DimbaError(f"task {task.name} has fewer distinct instances than its {stream} split needs "
                                 f"({n}; {len(out)} found in {attempts - 1} draws): ask for fewer, or choose larger "
                                 "task options")
            ex = task.example(rng)
            if keep(ex) and task.key(ex) not in seen:
                seen.add(task.key(ex))
                out.append(ex)
        return out

    seen: set = set()
    test = draw("test", n_test, (lambda ex: held_out(ex)) if held_out else (lambda ex: True), seen)
    # Training examples may repeat one another (a task can have few instances); never a test or val instance.
    rest = (lambda ex: not held_out(ex)) if held_out else (lambda ex: True)
    val = draw("val", n_val, rest, seen)
    closed = set(seen)
    train = draw("train", n_train, lambda ex: rest(ex) and task.key(ex) not in closed, set())
    return train, val, test


def to_arrays(examples: list[Example], tokenizer: Tokenizer, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens (N, seq_len) int32, given (N, seq_len) bool), right-padded with PAD, which counts as given."""
    if examples and len(examples[0].tokens) > seq_len:
        raise DimbaError(f"the task's examples are {len(examples[0].tokens)} tokens, longer than seq_len {seq_len}")
    vocab = tokenizer.hf.get_vocab()
    tokens = np.full((len(examples), seq_len), tokenizer.pad_id, dtype=np.int32)
    given = np.ones((len(examples), seq_len), dtype=bool)
    for i, ex in enumerate(examples):
        tokens[i, :len(ex.tokens)] = [vocab[t] for t in ex.tokens]
        given[i, :len(ex.given)] = ex.given
    return tokens, given


class TaskBlocks(torch.utils.data.Dataset):
    """Rows of a task split as {"tokens": (seq_len,) int64, "given": (seq_len,) bool}."""

    def __init__(self, tokens: np.ndarray, given: np.ndarray):
        self.tokens, self.given = tokens, given

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> dict:
        return {"tokens": torch.from_numpy(self.tokens[i].astype(np.int64)), "given": torch.from_numpy(self.given[i])}


def task_split_arrays(source: str, options: dict | None, seq_len: int, cache: Path) -> dict[str, np.ndarray]:
    """The train, val and test arrays of `task:NAME` with its options (n_train, n_test, n_val, seed and the task's
    own knobs), built once and cached as .npz under cache/tasks."""
    if not isinstance(options or {}, dict):
        raise DimbaError(f"data.task_options must be a mapping, got {options!r}")
    options = dict(options or {})
    split = {"n_train": 50_000, "n_test": 1000, "n_val": 500, "seed": 0}
    check_option_types("the task split", {k: v for k, v in options.items() if k in split}, split)
    n_train, n_test, n_val, seed = (options.pop(k, default) for k, default in split.items())
    task = build_task(source[len(TASK_PREFIX):], options)
    if task.length > seq_len:
        raise DimbaError(f"task {task.name} writes {task.length} tokens per example; set data.seq_len >= "
                         f"{task.length} (got {seq_len})")
    key = json.dumps([task.name, sorted(options.items()), n_train, n_test, n_val, seed, seq_len, VOCAB, TASK_VERSION])
    path = cache / "tasks" / f"{task.name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
    if not path.exists():
        train, val, test = make_split(task, n_train, n_test, seed, n_val)
        tok = task_tokenizer()
        arrays = {}
        for split, examples in (("train", train), ("val", val), ("test", test)):
            arrays[f"{split}_tokens"], arrays[f"{split}_given"] = to_arrays(examples, tok, seq_len)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)
    with np.load(path) as data:
        return {k: data[k] for k in data.files}
