"""The block-diffusion Pareto plot of docs/results.md: judged gen-PPL against batch-1 latency for 1024 new tokens.

The points come from several sittings (docs/results.md, "Block diffusion"), each with a fresh AR timed in the same
sitting, so the latency axis is the ratio to that sitting's AR: a CPU shared with a training run changes both
alike. Every gen-PPL is entropy matched against a judge trained by the ladder's command, at 1000 training steps.

    python scripts/block_pareto.py [--points docs/img/block_pareto.csv] [--out docs/img/block_pareto.png]

prints the points on the frontier (no other point is both faster and better) and writes the PNG.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from dimba.eval.plots import frontier, pareto

HERE = Path(__file__).resolve().parent.parent / "docs" / "img"


def read_points(path: Path) -> list[dict]:
    """One point per CSV row: run, steps (empty for AR), gen_ppl, latency_ms, ar_latency_ms (the same sitting's)."""
    points = []
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            steps = int(row["steps"]) if row["steps"] else None
            points.append({"run": row["run"], "steps": steps, "gen_ppl": float(row["gen_ppl"]),
                           "latency_s": float(row["latency_ms"]) / float(row["ar_latency_ms"]),
                           "label": row["run"] + ("" if steps is None else f", {steps} steps")})
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=Path, default=HERE / "block_pareto.csv")
    parser.add_argument("--out", type=Path, default=HERE / "block_pareto.png")
    args = parser.parse_args()
    points = read_points(args.points)
    pareto(points, args.out, xlabel="latency for 1024 tokens at batch 1 / AR's in the same sitting")
    for p in frontier(points):
        print(f"frontier: {p['label']}: gen-PPL {p['gen_ppl']:g} at {p['latency_s']:.2f}x AR's latency")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
