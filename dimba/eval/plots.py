"""PNG plots of the quality and speed results (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dimba.sampling import SamplingConfig  # noqa: E402

REFERENCE_KINDS = ("ar", "reference", "random")


# What a step curve may vary; every other sampling option of its rows is at its default.
CURVE_OPTIONS = {"steps", "sampler", "reveal", "seed"}


def is_step_curve(row: dict) -> bool:
    """Rows of a model with steps that differ only in steps, sampler and reveal order (every other sampling
    option at its default), or that had a knob set to match real text's entropy."""
    if row["model"] in REFERENCE_KINDS or row.get("steps") is None:
        return False
    defaults = SamplingConfig().as_dict()
    return bool(row.get("matched_by")) or all(row.get(name, default) == default for name, default in defaults.items()
                                              if name not in CURVE_OPTIONS)


def curve_name(row: dict) -> str:
    matched = f" (entropy matched by {row['matched_by']})" if row.get("matched_by") else ""
    return f"{row['model']} {row.get('sampler', '')} {row.get('reveal', '')}".strip() + matched


def quality_vs_steps(rows: list[dict], path: Path) -> plt.Figure:
    """gen-PPL (log) and unigram entropy against DIMBA's steps, per sampler, with AR and real text as lines."""
    fig, (ax_ppl, ax_ent) = plt.subplots(1, 2, figsize=(11, 4))
    curves = [r for r in rows if is_step_curve(r)]
    for name in sorted({curve_name(r) for r in curves}):
        pts = sorted((r["steps"], r["gen_ppl"], r["entropy_bits"]) for r in curves if curve_name(r) == name)
        ax_ppl.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=name)
        ax_ent.plot([p[0] for p in pts], [p[2] for p in pts], "o-", label=name)
    references = [r for r in rows if r["model"] in REFERENCE_KINDS]
    for i, r in enumerate(references):
        style = {"ar": "--", "reference": ":", "random": "-."}[r["model"]]
        color = f"C{i + 2}"
        ax_ppl.axhline(r["gen_ppl"], ls=style, color=color, label=r["label"])
        ax_ent.axhline(r["entropy_bits"], ls=style, color=color, label=r["label"])
    for ax, name in ((ax_ppl, "gen-PPL (judge)"), (ax_ent, "unigram entropy (bits)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("denoising steps")
        ax.set_ylabel(name)
        ax.legend(fontsize=7)
    ax_ppl.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return fig


def quality_vs_latency(rows: list[dict], path: Path) -> plt.Figure:
    """gen-PPL against batch-1 latency per sample: DIMBA's step counts as a curve, AR as points."""
    fig, ax = plt.subplots(figsize=(6, 4))
    curves = [r for r in rows if is_step_curve(r)]
    for name in sorted({curve_name(r) for r in curves}):
        pts = sorted((r["latency_b1_s"], r["gen_ppl"], r["steps"]) for r in curves if curve_name(r) == name)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=name)
        for x, y, steps in pts:
            ax.annotate(str(steps), (x, y), fontsize=7)
    for r in rows:
        if r["model"] == "ar":
            ax.plot(r["latency_b1_s"], r["gen_ppl"], "s", label=r["label"])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("latency per sample at batch 1 (s)")
    ax.set_ylabel("gen-PPL (judge)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return fig


def quality_vs_entropy(rows: list[dict], path: Path) -> plt.Figure:
    """gen-PPL against the samples' unigram entropy, every row a point: fluency bought with dull text shows
    as a move down and to the left; real text marks where both should be."""
    fig, ax = plt.subplots(figsize=(6, 4))
    markers = {"reference": "*", "random": "x", "ar": "s"}
    for r in rows:
        ax.plot(r["entropy_bits"], r["gen_ppl"], markers.get(r["model"], "o"), label=r["label"])
    ax.set_yscale("log")
    ax.set_xlabel("unigram entropy of the samples (bits)")
    ax.set_ylabel("gen-PPL (judge)")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return fig


def steps_across_runs(runs: dict[str, list[dict]], path: Path) -> plt.Figure:
    """gen-PPL (log) against denoising steps, one line per run and curve; every run's AR rows (named by run) and
    the real continuation as labelled horizontal lines."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    levels = {}  # label -> gen-PPL; the real continuation is the same in every run
    for i, (name, rows) in enumerate(runs.items()):
        curves = [r for r in rows if is_step_curve(r)]
        for j, curve in enumerate(sorted({curve_name(r) for r in curves})):
            pts = sorted((r["steps"], r["gen_ppl"]) for r in curves if curve_name(r) == curve)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-" if j == 0 else "s--", color=f"C{i}",
                    label=f"{name}: {curve}")
        for r in rows:
            if r["model"] in REFERENCE_KINDS and r["model"] != "random":
                levels.setdefault(r["label"] if r["model"] == "reference" else f"{name}: {r['label']}", r["gen_ppl"])
    for label, ppl in levels.items():
        ax.axhline(ppl, ls=":", color="gray")
        # x in axes fraction: the label sits at the left edge whatever the step range turns out to be.
        ax.annotate(label, (0.01, ppl), xycoords=ax.get_yaxis_transform(), fontsize=6, va="bottom")
    ax.set(xscale="log", yscale="log", xlabel="denoising steps", ylabel="gen-PPL (judge)")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return fig


def dominates(q: dict, p: dict) -> bool:
    """q is at least as fast and as good as p, and better on one of the two."""
    return (q["latency_s"] <= p["latency_s"] and q["gen_ppl"] <= p["gen_ppl"]
            and (q["latency_s"] < p["latency_s"] or q["gen_ppl"] < p["gen_ppl"]))


def frontier(points: list[dict]) -> list[dict]:
    """The points (dicts with latency_s and gen_ppl) that no other point dominates, fastest first."""
    return sorted((p for p in points if not any(dominates(q, p) for q in points)), key=lambda p: p["latency_s"])


def pareto(points: list[dict], path: Path, xlabel: str = "latency at batch 1 (s)") -> plt.Figure:
    """gen-PPL against batch-1 latency (both log), one colour per run (its step counts joined), the points no other
    beats on both axes ringed: the Pareto frontier of quality and speed. `xlabel` names what `latency_s` holds
    (seconds, or a ratio to AR's latency when the points come from several sittings)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, run in enumerate(dict.fromkeys(p["run"] for p in points)):
        pts = sorted((p["latency_s"], p["gen_ppl"], p["steps"]) for p in points if p["run"] == run)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=f"C{i % 10}", label=run)
        for x, y, steps in pts:
            if steps is not None:
                ax.annotate(str(steps), (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    front = frontier(points)
    ax.scatter([p["latency_s"] for p in front], [p["gen_ppl"] for p in front], s=120, facecolors="none",
               edgecolors="black", label="Pareto frontier")
    ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel="gen-PPL at real text's entropy")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return fig
