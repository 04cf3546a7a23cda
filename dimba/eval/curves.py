"""Reading training curves from TensorBoard logs (`dimba curves`): every scalar of a run, and the per-t
validation metrics (`val_t/*`) at a chosen step."""

from __future__ import annotations

import re
from pathlib import Path

from dimba.errors import DimbaError


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} from every event file under run_dir."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(run_dir.rglob("events.out.tfevents*"))
    if not files:
        raise DimbaError(f"no TensorBoard event files under {run_dir}")
    scalars: dict[str, list[tuple[int, float]]] = {}
    for f in files:
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return {tag: sorted(v) for tag, v in scalars.items()}


def by_noise_level(scalars: dict, kind: str, step: int | None) -> dict[float, float]:
    """{t: value} of val_t/{kind}@t at the validation nearest to `step` (the last one if None)."""
    out = {}
    for tag, points in scalars.items():
        m = re.fullmatch(rf"val_t/{kind}@([0-9.]+)", tag)
        if m and points:
            point = points[-1] if step is None else min(points, key=lambda p: abs(p[0] - step))
            out[float(m.group(1))] = point[1]
    return dict(sorted(out.items()))
