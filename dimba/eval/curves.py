"""Training curves from TensorBoard logs: loss against step, and token accuracy / cross-entropy against the
noise level t (the `val_t/*` metrics) at a chosen step, for one or more runs side by side.

    python -m dimba.eval.curves runs/base runs/abl_paper --step 250 --out docs/img/curves.png
"""

from __future__ import annotations

import argparse
import json
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders holding TensorBoard event files")
    parser.add_argument("--step", type=int, default=None, help="validation step for the curves against t")
    parser.add_argument("--out", type=Path, required=True, help="PNG path; a .json with the numbers is written beside")
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc, ax_ce) = plt.subplots(1, 3, figsize=(15, 4))
    numbers = {}
    for run in args.runs:
        try:
            scalars = read_scalars(run)
        except DimbaError as err:
            parser.exit(2, f"error: {err}\n")
        name = run.name
        if "train/loss" in scalars:
            steps, values = zip(*scalars["train/loss"], strict=True)
            ax_loss.plot(steps, values, label=name)
        acc, ce = by_noise_level(scalars, "acc", args.step), by_noise_level(scalars, "ce", args.step)
        ax_acc.plot(list(acc), list(acc.values()), "o-", label=name)
        ax_ce.plot(list(ce), list(ce.values()), "o-", label=name)
        numbers[name] = {"acc_by_t": acc, "ce_by_t": ce, "val_loss": scalars.get("val/loss", [])}
    ax_loss.set(xlabel="step", ylabel="train/loss", yscale="log")
    where = "last validation" if args.step is None else f"validation near step {args.step}"
    ax_acc.set(xlabel="t", ylabel=f"token accuracy ({where})")
    ax_ce.set(xlabel="t", ylabel=f"cross-entropy, nats ({where})")
    for ax in (ax_loss, ax_acc, ax_ce):
        ax.legend(fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    args.out.with_suffix(".json").write_text(json.dumps(numbers, indent=2))
    print(args.out)


if __name__ == "__main__":
    main()
