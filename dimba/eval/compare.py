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


def read_task_rows(folder: Path) -> list[dict]:
    """The rows of a `dimba eval --task true` run, each learned row with the epochs its checkpoint had trained."""
    path = folder / "task.json"
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))["rows"]
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise DimbaError(f"{path} is not a task file of `dimba eval --task true` "
                         f"({type(err).__name__}: {err})") from None
    if any(r.get("model") != "baseline" and "epochs" not in r for r in rows):
        raise DimbaError(f"{path} was written before task rows carried their training epochs: run its "
                         "`dimba eval --task true` again")
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


def latency_points(eval_dirs: list[Path], bench_dirs: list[Path], length: int | None = None) -> list[dict]:
    """Quality against speed: every entropy-matched row of each `dimba eval` run, with the batch-1 latency that a
    `dimba bench` run measured for the same checkpoint and step count (at `length` new tokens; default the
    longest measured). Rows without a matching measurement are left out."""
    latency: dict[tuple[str, int | None], float] = {}
    for folder in bench_dirs:
        path = folder / "bench.json"
        if not path.is_file():
            raise DimbaError(f"no bench.json in {folder} (run `dimba bench --out_dir {folder}` first)")
        bench = json.loads(path.read_text(encoding="utf-8"))
        settings, rows = bench.get("settings", {}), [r for r in bench["generation"] if r["batch"] == 1]
        longest = length or max((r["length"] for r in rows), default=0)
        for r in rows:
            ckpt = settings.get("ar_ckpt_path" if r["steps"] is None else "ckpt_path")
            if r["length"] == longest and ckpt not in (None, "None"):
                latency[(str(Path(ckpt).resolve()), r["steps"])] = r["latency_s"]
    points = []
    for folder in eval_dirs:
        results = json.loads((folder / "results.json").read_text(encoding="utf-8"))
        ckpt = str(Path(results["settings"]["ckpt_path"]).resolve())
        for row in read_rows(folder):
            if not row.get("matched_by"):
                continue
            steps = row.get("steps") if row["model"] != "ar" else None
            if (ckpt, steps) in latency:
                points.append({"run": folder.name, "steps": steps, "gen_ppl": row["gen_ppl"],
                               "latency_s": latency[(ckpt, steps)],
                               "label": folder.name + ("" if steps is None else f", {steps} steps")})
    if not points:
        raise DimbaError("no entropy-matched row of these evaluations has a batch-1 latency in these benchmarks "
                         "(the same checkpoint and step count)")
    return points
