"""Several `dimba eval` runs side by side (an ablation, a ladder of models).

--row LABEL: that row of each run, gen-PPL against entropy, one point per run, with the real continuation and
random tokens as references, plus a Markdown table and a few samples.
--curves: gen-PPL against denoising steps, one line per run (and per sampler / reveal order), with each run's
AR rows as horizontal lines; `--matched_only`: only the rows at real text's entropy.

    python -m dimba.eval.compare runs/eval_abl_paper runs/eval_abl_norm --row "DIMBA ddim 32 steps" \\
        --out docs/img/ladder.png
    python -m dimba.eval.compare runs/eval_gauss runs/eval_hybrid runs/eval_masked --curves --out steps.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dimba.errors import DimbaError


def read_rows(folder: Path) -> list[dict]:
    path = folder / "results.json"
    if not path.is_file():
        raise DimbaError(f"no results.json in {folder} (run `dimba eval --out_dir {folder}` first)")
    return json.loads(path.read_text())["rows"]


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("eval_dirs", nargs="+", type=Path, help="output folders of `dimba eval`")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--row", help="the row label to compare, e.g. 'DIMBA ddim 32 steps'")
    mode.add_argument("--curves", action="store_true", help="gen-PPL against steps, one line per run")
    parser.add_argument("--matched_only", action="store_true",
                        help="with --curves: only the rows at real text's entropy (dimba eval --match_entropy), the "
                             "ones comparable across models")
    parser.add_argument("--out", type=Path, required=True, help="PNG path; .md (table and samples) written beside")
    args = parser.parse_args(argv)
    if args.matched_only and not args.curves:
        parser.error("--matched_only goes with --curves")
    try:
        if args.curves:
            runs = {folder.name: read_rows(folder) for folder in args.eval_dirs}
            if args.matched_only:
                runs = {name: [r for r in rows if r.get("matched_by") or r["model"] in ("reference", "random")]
                        for name, rows in runs.items()}
        else:
            rows = pick_rows(args.eval_dirs, args.row)
    except DimbaError as err:
        parser.exit(2, f"error: {err}\n")
    if args.curves:
        from dimba.eval.plots import steps_across_runs

        args.out.parent.mkdir(parents=True, exist_ok=True)
        fig = steps_across_runs(runs, args.out)
        print("\n".join(fig.axes[0].get_legend_handles_labels()[1] + [str(args.out)]))
        return

    from dimba.eval.plots import quality_vs_entropy
    from dimba.eval.quality import markdown

    args.out.parent.mkdir(parents=True, exist_ok=True)
    quality_vs_entropy(rows, args.out)
    samples = "".join(f"\n**{r['label']}**: {json.dumps(r['samples'][0]['completion'])}\n"
                      for r in rows if r.get("samples"))
    table = markdown(rows)
    args.out.with_suffix(".md").write_text(table + samples)
    print(table)


if __name__ == "__main__":
    main()
