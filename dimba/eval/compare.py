"""Reading several `dimba eval` runs side by side (`dimba compare`)."""

from __future__ import annotations

import json
from pathlib import Path

from dimba.errors import DimbaError


def read_rows(folder: Path) -> list[dict]:
    path = folder / "results.json"
    if not path.is_file():
        raise DimbaError(f"no results.json in {folder} (run `dimba eval --out_dir {folder}` first)")
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))["rows"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise DimbaError(f"{path} is not a results file of `dimba eval` ({type(err).__name__}: {err})") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "label" in r and "model" in r for r in rows):
        raise DimbaError(f"{path} is not a results file of `dimba eval` (its rows are not labelled results)")
    return rows


def pick_rows(eval_dirs: list[Path], label: str) -> list[dict]:
    """The references of the first run, then the row called `label` of each run, relabelled by its folder."""
    rows = []
    for i, folder in enumerate(eval_dirs):
        path = folder / "results.json"
        run_rows = read_rows(folder)
        if i == 0:
            rows += [r for r in run_rows if r["model"] in ("reference", "random")]
        match = [r for r in run_rows if r["label"] == label]
        if not match:
            raise DimbaError(f"{path} has no row {label!r}; it has: {', '.join(r['label'] for r in run_rows)}")
        rows.append(match[0] | {"label": folder.name})
    return rows
