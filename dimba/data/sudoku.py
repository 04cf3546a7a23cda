"""6x6 Sudoku (rows of 6, boxes of 2 rows x 3 columns): a bitmask solver, the singles propagation that easy
puzzles fall to, the grid's symmetry classes, and a generator of puzzles that propagation cannot finish.

A puzzle is a list of 36 digits, 0 for a blank. Candidates of a cell are a bitmask over digits 1..6 (bit d).
- `count_solutions`: depth-first, the most constrained cell first, up to a limit (uniqueness needs 2).
- `propagate`: naked singles (a cell with one candidate) and hidden singles (a digit with one place in a row,
  column or box), repeated until neither applies. What it cannot finish needs search or harder reasoning.
- `symmetry_class`: the canonical form of a solution grid under every symmetry of 6x6 Sudoku that keeps its
  box shape: the 720 digit relabellings, the 48 row orders (3 bands of 2 rows, each band's rows, the bands) and
  the 72 column orders (2 stacks of 3 columns, each stack's columns, the stacks). Grids of one class are the same
  puzzle seen differently; there are a few dozen classes, and a fair split keeps whole classes apart.
"""

from __future__ import annotations

import itertools
import random

import numpy as np

ROWS = [[r * 6 + c for c in range(6)] for r in range(6)]
COLS = [[r * 6 + c for r in range(6)] for c in range(6)]
BOXES = [[(br * 2 + i) * 6 + bc * 3 + j for i in range(2) for j in range(3)] for br in range(3) for bc in range(2)]
UNITS = ROWS + COLS + BOXES
PEERS = [sorted({p for unit in UNITS if cell in unit for p in unit} - {cell}) for cell in range(36)]
ALL = 0b1111110  # digits 1..6


def candidates(grid: list[int], cell: int) -> int:
    used = 0
    for p in PEERS[cell]:
        used |= 1 << grid[p]
    return ALL & ~used


def digits(mask: int) -> list[int]:
    return [d for d in range(1, 7) if mask >> d & 1]


def count_solutions(grid: list[int], limit: int = 2) -> int:
    """Solutions of grid (0 = blank), counted up to `limit`."""
    best, best_mask, best_count = -1, 0, 7
    for cell in range(36):
        if grid[cell]:
            continue
        mask = candidates(grid, cell)
        n = bin(mask).count("1")
        if n < best_count:
            best, best_mask, best_count = cell, mask, n
            if n <= 1:
                break
    if best < 0:
        return 1
    total = 0
    for d in digits(best_mask):
        grid[best] = d
        total += count_solutions(grid, limit - total)
        grid[best] = 0
        if total >= limit:
            break
    return total


def propagate(grid: list[int]) -> list[int]:
    """The grid after naked and hidden singles, applied until neither finds a cell (0s remain where they stop)."""
    g = list(grid)
    while True:
        progress = False
        for cell in range(36):
            if not g[cell]:
                mask = candidates(g, cell)
                if mask and mask & (mask - 1) == 0:  # one candidate
                    g[cell] = mask.bit_length() - 1
                    progress = True
        for unit in UNITS:
            for d in range(1, 7):
                if any(g[c] == d for c in unit):
                    continue
                spots = [c for c in unit if not g[c] and candidates(g, c) >> d & 1]
                if len(spots) == 1:
                    g[spots[0]] = d
                    progress = True
        if not progress:
            return g


def random_solution(rng: random.Random) -> list[int]:
    grid = [0] * 36

    def fill(cell: int) -> bool:
        if cell == 36:
            return True
        options = digits(candidates(grid, cell))
        rng.shuffle(options)
        for d in options:
            grid[cell] = d
            if fill(cell + 1):
                return True
        grid[cell] = 0
        return False

    fill(0)
    return grid


def hard_puzzle(rng: random.Random, tries: int = 500) -> tuple[list[int], list[int]] | None:
    """(puzzle, solution) with a unique solution that propagation cannot finish: blanks are dug from a random
    solution in random order (each kept only if the solution stays unique) until propagation stops short. None
    if `tries` solutions all reach a minimal puzzle first (about 1 in 20 does not)."""
    for _ in range(tries):
        solution = random_solution(rng)
        puzzle = list(solution)
        for cell in rng.sample(range(36), 36):
            puzzle[cell] = 0
            if count_solutions(list(puzzle)) != 1:
                puzzle[cell] = solution[cell]
            elif 0 in propagate(puzzle):
                return puzzle, solution
    return None


def _orders(groups: int, size: int) -> list[list[int]]:
    """Every order of `groups` groups of `size` consecutive lines that keeps each group together."""
    out = []
    for group_order in itertools.permutations(range(groups)):
        for inner in itertools.product(*(itertools.permutations(range(size)) for _ in range(groups))):
            out.append([g * size + inner[k][i] for k, g in enumerate(group_order) for i in range(size)])
    return out


_CELL_ORDERS = np.array([[r * 6 + c for r in rows for c in cols]
                         for rows in _orders(3, 2) for cols in _orders(2, 3)])  # (3456, 36)


def symmetry_class(solution: list[int]) -> tuple[int, ...]:
    """The canonical form of a solution grid: the smallest, in lexicographic order, of its row and column
    reorderings, each relabelled so that its first row reads 1..6."""
    grids = np.asarray(solution)[_CELL_ORDERS]  # (3456, 36)
    relabel = np.zeros((len(grids), 7), dtype=np.int64)
    relabel[np.arange(len(grids))[:, None], grids[:, :6]] = np.arange(1, 7)
    canonical = np.take_along_axis(relabel, grids, axis=1)
    return tuple(canonical[np.lexsort(canonical.T[::-1])[0]].tolist())


def satisfies_constraints(grid: list[int]) -> bool:
    """Every row, column and box holds 1..6 once."""
    return all(sorted(grid[c] for c in unit) == [1, 2, 3, 4, 5, 6] for unit in UNITS)


def baselines(puzzle: list[int], solution: list[int]) -> dict[str, tuple[float, float]]:
    """Expected (accuracy on the blank cells, exact match) of three guessers that need no learning: a uniform
    digit per blank; a uniform digit among those the givens allow; propagation, then the allowed digits."""
    blanks = [c for c in range(36) if not puzzle[c]]
    allowed = [1 / bin(candidates(puzzle, c)).count("1") for c in blanks]
    after = propagate(puzzle)
    left = [c for c in range(36) if not after[c]]
    solved = sum(after[c] == solution[c] for c in blanks if after[c])
    guess = [1 / max(1, bin(candidates(after, c)).count("1")) for c in left]
    return {"uniform": (1 / 6, (1 / 6) ** len(blanks)),
            "allowed digits": (sum(allowed) / len(blanks), float(np.prod(allowed))),
            "propagation": ((solved + sum(guess)) / len(blanks), float(np.prod(guess)) if left else 1.0)}


def random_symmetry(puzzle: list[int], solution: list[int], rng: random.Random) -> tuple[list[int], list[int]]:
    """The same puzzle seen under a random symmetry: a row and column order and a relabelling of the digits."""
    order = _CELL_ORDERS[rng.randrange(len(_CELL_ORDERS))]
    relabel = [0, *rng.sample(range(1, 7), 6)]  # 0 (a blank) stays 0
    return [relabel[puzzle[c]] for c in order], [relabel[solution[c]] for c in order]
