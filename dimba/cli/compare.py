"""`dimba compare`: several `dimba eval` runs side by side (an ablation, a ladder of models)."""

from __future__ import annotations

import json
from pathlib import Path

from dimba.errors import ConfigError
from dimba.eval.compare import latency_points, pick_rows, read_rows, read_task_rows
from dimba.outputs import check_output_file, is_png


def compare(runs: list[Path], out: Path, row: str | None = None, matched_only: bool = False,
            latency: list[Path] | None = None, length: int | None = None, overwrite: bool = False) -> None:
    """plot several `dimba eval` runs together: gen-PPL against steps, against latency, or one row of each

    Without --row: gen-PPL against denoising steps, one line per run (and per sampler / reveal order), each run's
    AR rows as horizontal lines; for runs of `dimba eval --task true`, their learning curves together (exact match
    and accuracy per position against training epochs) and each run's last checkpoint as a table.
    With --row LABEL: that row of each run, gen-PPL against entropy, one point per run, with the real
    continuation and random tokens as references, a Markdown table and a sample of each.
    With --latency BENCH_DIRS: every entropy-matched row against the batch-1 latency `dimba bench` measured for
    its checkpoint and step count, the Pareto frontier ringed, and a table beside (.md).

    Args:
        runs: output folders of `dimba eval`, e.g. [runs/eval_a,runs/eval_b]
        out: the PNG to write (a .md beside it with --row)
        row: the row label to compare across runs (as in results.md)
        matched_only: without --row: only the rows at real text's entropy (`dimba eval --match_entropy`), the ones
            comparable across models
        latency: `dimba bench` output folders: plot quality against their batch-1 latency
        length: with --latency: the generation length whose latency counts (default: the longest measured)
        overwrite: replace --out (and the .md beside it) even if they are not earlier outputs of this command
    """
    if not runs:
        raise ConfigError("--runs needs at least one `dimba eval` folder")
    check_output_file(out, is_png, overwrite, "dimba compare")
    if row is not None or latency:
        check_output_file(out.with_suffix(".md"), lambda head: head.startswith(b"| label |"), overwrite,
                          "dimba compare")
    out.parent.mkdir(parents=True, exist_ok=True)
    if all((folder / "task.json").is_file() for folder in runs):
        if row is not None or latency or matched_only:
            raise ConfigError("task evaluations compare as learning curves: --row, --latency and --matched_only "
                              "go with text evaluations")
        from dimba.eval.tasks import plot_learning_curves, task_table

        curves = {folder.name: read_task_rows(folder) for folder in runs}
        plot_learning_curves(curves, out)
        for name, rows in curves.items():
            last = max(r.get("step", 0) for r in rows)
            print(f"{name}\n" + task_table([r for r in rows if r["model"] == "baseline" or r["step"] == last]))
        print(out)
        return
    if latency:
        from dimba.eval.plots import pareto
        from dimba.eval.quality import markdown

        points = latency_points(runs, latency, length)
        pareto(points, out)
        table = markdown(points, ["label", "gen_ppl", "latency_s"])
        out.with_suffix(".md").write_text(table)
        print(table)
        return
    if row is None:
        from dimba.eval.plots import steps_across_runs

        curves = {folder.name: read_rows(folder) for folder in runs}
        if matched_only:
            curves = {name: [r for r in rows if r.get("matched_by") or r["model"] in ("reference", "random")]
                      for name, rows in curves.items()}
        fig = steps_across_runs(curves, out)
        print("\n".join(fig.axes[0].get_legend_handles_labels()[1] + [str(out)]))
        return
    if matched_only:
        raise ConfigError("--matched_only goes with the curves against steps (no --row)")
    from dimba.eval.plots import quality_vs_entropy
    from dimba.eval.quality import markdown

    rows = pick_rows(runs, row)
    quality_vs_entropy(rows, out)
    samples = "".join(f"\n**{r['label']}**: {json.dumps(r['samples'][0]['completion'])}\n"
                      for r in rows if r.get("samples"))
    table = markdown(rows)
    out.with_suffix(".md").write_text(table + samples)
    print(table)
