"""`dimba curves`: training curves of runs side by side, from their TensorBoard logs."""

from __future__ import annotations

import json
from pathlib import Path

from dimba.errors import ConfigError
from dimba.eval.curves import by_noise_level, read_scalars
from dimba.outputs import check_output_file, is_png


def curves(runs: list[Path], out: Path, step: int | None = None, overwrite: bool = False) -> None:
    """plot training loss against step and validation accuracy / cross-entropy against the noise level t

    Args:
        runs: run folders holding TensorBoard event files, e.g. [runs/base,runs/masked]
        out: the PNG to write (a .json with the numbers beside it)
        step: the validation step of the curves against t (default: each run's last)
        overwrite: replace --out (and the .json beside it) even if they are not earlier outputs of this command
    """
    if not runs:
        raise ConfigError("--runs needs at least one run folder")
    check_output_file(out, is_png, overwrite, "dimba curves")
    check_output_file(out.with_suffix(".json"), lambda head: b'"acc_by_t"' in head, overwrite, "dimba curves")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scalars = {run.name: read_scalars(run) for run in runs}  # every run readable before anything is drawn
    fig, (ax_loss, ax_acc, ax_ce) = plt.subplots(1, 3, figsize=(15, 4))
    numbers = {}
    for name, run_scalars in scalars.items():
        if "train/loss" in run_scalars:
            steps, values = zip(*run_scalars["train/loss"], strict=True)
            ax_loss.plot(steps, values, label=name)
        acc, ce = by_noise_level(run_scalars, "acc", step), by_noise_level(run_scalars, "ce", step)
        ax_acc.plot(list(acc), list(acc.values()), "o-", label=name)
        ax_ce.plot(list(ce), list(ce.values()), "o-", label=name)
        numbers[name] = {"acc_by_t": acc, "ce_by_t": ce, "val_loss": run_scalars.get("val/loss", [])}
    ax_loss.set(xlabel="step", ylabel="train/loss", yscale="log")
    where = "last validation" if step is None else f"validation near step {step}"
    ax_acc.set(xlabel="t", ylabel=f"token accuracy ({where})")
    ax_ce.set(xlabel="t", ylabel=f"cross-entropy, nats ({where})")
    for ax in (ax_loss, ax_acc, ax_ce):
        ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    out.with_suffix(".json").write_text(json.dumps(numbers, indent=2))
    print(out)
