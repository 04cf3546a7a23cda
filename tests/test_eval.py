"""`dimba eval` and `dimba bench` end to end on tiny checkpoints: they run and write their outputs."""

import json
import subprocess
import sys

import pytest

from tests.helpers import REPO, assert_clean_failure, dimba, dimba_in_process


def test_eval_writes_json_markdown_and_plots(trained, trained_ar, workdir):
    out = workdir / "eval"
    result = dimba("eval", "--ckpt_path", trained, "--judge_ckpt_path", trained_ar, "--ar_ckpt_path", trained_ar,
                   "--source", workdir / "corpus", "--num_prompts", 4, "--prompt_len", 8, "--gen_len", 8,
                   "--grid", "{steps: [2, 4], sampler: [ddim, ddpm]}", "--ablations",
                   "{guidance: [2.0], x0_temperature: [0.5], self_condition: [false]}",
                   "--at_steps", 2, "--batch_size", 2, "--sensitivity", "true", "--diagnose", "true",
                   "--match_entropy", "x0_temperature", "--infill_gap", 4, "--out_dir", out, cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())
    labels = [r["label"] for r in data["rows"]]
    assert labels[:2] == ["real continuation", "random tokens by corpus frequency"]
    assert "DIMBA, 4 steps" in labels and "DIMBA, 2 steps, sampler ddpm" in labels
    assert "DIMBA, 2 steps, guidance 2.0" in labels and "DIMBA, 2 steps, self condition False" in labels
    assert "DIMBA, 2 steps, x0 temperature 0.5" in labels and "AR, top p 0.9" in labels
    real = data["rows"][0]["samples"]
    assert len(real) == 3 and all(s["prompt"] and s["completion"] for s in real)
    assert all(r["gen_ppl"] > 1 and 0 <= r["distinct_1"] <= 1 for r in data["rows"])
    assert set(data["parameters"]) == {"dimba", "judge", "ar"}
    matched = [r for r in data["rows"] if r.get("matched_by")]
    assert [r["matched_by"] for r in matched] == ["x0_temperature", "x0_temperature", "top_p"]  # 2 and 4 steps, AR
    assert all(0.3 <= r[r["matched_by"]] <= 1.5 and "entropy matched by" in r["label"] for r in matched)
    infill = data["infill"]
    assert [r["model"] for r in infill] == ["reference", "dimba", "ar"] and all(r["infill_gap"] == 4 for r in infill)
    assert all(0 <= r["gap_token_match"] <= 1 for r in infill[1:]) and infill[0]["gen_ppl"] > 1
    assert all(r["fill_nats"] > 0 and r["after_gap_nats"] > 0 for r in infill)
    assert "| label | gen_ppl | fill_nats | after_gap_nats | gap_token_match |" in (out / "results.md").read_text()
    sensitivity = {r["label"]: r for r in data["prompt_sensitivity"]}
    assert set(sensitivity) == {"DIMBA, 2 steps", "AR"}
    for r in sensitivity.values():
        assert 0 <= r["agreement_same_noise"] <= 1 and 0 <= r["agreement_real_text"] <= 1
        assert r["judge_nats_first_4_own_prompt"] > 0 and r["judge_nats_first_4_other_prompt"] > 0
    ranks = data["noise_rank"]
    assert [r["t"] for r in ranks][:2] == [0.05, 0.1] and ranks[-1]["true_token_rank_share"] > 0.3
    assert ranks[0]["nearest_is_true"] > ranks[-1]["nearest_is_true"]  # more noise, less identity
    for name in ("results.md", "quality_vs_steps.png", "quality_vs_entropy.png", "quality_vs_latency.png"):
        assert (out / name).stat().st_size > 0
    assert list(out.glob("events.out.tfevents*"))


def test_entropy_matching_runs_at_the_grids_single_valued_options(trained_hybrid, trained_ar, workdir):
    """A grid of reveal: [confidence] asks for that order; its entropy-matched rows use it, not the base's
    random order, and keep the base's other options."""
    out = workdir / "eval_matched_confidence"
    result = dimba("eval", "--ckpt_path", trained_hybrid, "--judge_ckpt_path", trained_ar, "--source",
                   workdir / "corpus", "--num_prompts", 4, "--prompt_len", 8, "--gen_len", 8,
                   "--grid", "{steps: [2], reveal: [confidence]}", "--ablations", "{}", "--match_entropy",
                   "temperature", "--sampling.x0_temperature", "0.9", "--batch_size", 2, "--out_dir", out,
                   cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    matched = [r for r in json.loads((out / "results.json").read_text())["rows"] if r.get("matched_by")]
    assert len(matched) == 1 and matched[0]["steps"] == 2 and matched[0]["reveal"] == "confidence"
    assert matched[0]["x0_temperature"] == 0.9 and "reveal confidence" in matched[0]["label"]


def test_eval_of_a_hybrid_model_at_a_base_sampling_setting(trained_hybrid, trained, trained_ar, workdir):
    out = workdir / "eval_hybrid"
    result = dimba("eval", "--ckpt_path", trained_hybrid, "--judge_ckpt_path", trained_ar, "--source",
                   workdir / "corpus", "--num_prompts", 4, "--prompt_len", 8, "--gen_len", 8,
                   "--grid", "{steps: [2], reveal: [random]}", "--ablations", "{self_condition: [false]}",
                   "--sampling.reveal", "confidence", "--sampling.x0_temperature", "0.9",
                   "--at_steps", 2, "--batch_size", 2, "--sensitivity", "true", "--out_dir", out, cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())
    rows = [r for r in data["rows"] if r.get("model") == "hybrid"]
    # the base (the model's own steps: its block size, 4 per block), 2 steps with reveal random, 2 steps without
    # self-conditioning
    assert len(rows) == 3 and {r["x0_temperature"] for r in rows} == {0.9} and rows[0]["steps"] == 4
    assert [r["reveal"] for r in rows] == ["confidence", "random", "confidence"]
    label = data["prompt_sensitivity"][0]["label"]
    assert label == "DIMBA hybrid block 4, 2 steps per block, reveal confidence, x0 temperature 0.9"
    refused = dimba("eval", "--ckpt_path", trained, "--judge_ckpt_path", trained_ar, "--sampling.reveal",
                    "confidence", "--out_dir", workdir / "eval_refused", cwd=workdir)
    assert_clean_failure(refused, "--sampling sets reveal, which DIMBA (Gaussian diffusion) does not read")
    unknown = dimba("eval", "--ckpt_path", trained, "--judge_ckpt_path", trained_ar, "--grid", "{speed: [3]}",
                    cwd=workdir)
    assert_clean_failure(unknown, "unknown sampling option(s) speed in a grid")


def test_eval_refuses_swapped_checkpoints(trained, trained_ar, workdir):
    result = dimba("eval", "--ckpt_path", trained_ar, "--judge_ckpt_path", trained, "--source",
                   workdir / "corpus", cwd=workdir)
    assert result.returncode == 2 and "--judge_ckpt_path must be an autoregressive model" in result.stderr


def test_eval_refuses_an_infill_gap_longer_than_the_text_before_any_work(trained):
    result = dimba_in_process("eval", "--ckpt_path", trained, "--judge_ckpt_path", trained, "--prompt_len", 8,
                              "--gen_len", 8, "--infill_gap", 16)
    assert result.returncode == 2 and "--infill_gap must be in 1..15, got 16" in result.stderr


def test_an_interrupted_eval_resumes_where_it_stopped_and_gives_the_straight_rows(trained, trained_ar, workdir,
                                                                                   monkeypatch):
    """Ctrl-C during the third setting: the finished ones are in partial.json; the same command again computes
    only the missing settings, writes what a straight run writes (timings aside) and removes the journal; a
    command with other prompts reuses nothing."""
    from dimba.eval.quality import QualityEval
    def run(out, *extra, interrupt_at=0):
        """`dimba eval` in this process; returns (result, the step counts of the settings it computed)."""
        computed = []

        def model_row(self, model, cfg, batch_size):
            computed.append(cfg.steps)
            if len(computed) == interrupt_at:
                raise KeyboardInterrupt
            return real_row(self, model, cfg, batch_size)

        monkeypatch.setattr(QualityEval, "model_row", model_row)
        result = dimba_in_process("eval", "--ckpt_path", trained, "--judge_ckpt_path", trained_ar, "--source",
                                  workdir / "corpus", "--num_prompts", 4, "--prompt_len", 8, "--gen_len", 8,
                                  "--grid", "{steps: [2, 4], sampler: [ddim]}", "--ablations",
                                  "{guidance: [2.0], self_condition: [false]}", "--at_steps", 2, "--batch_size", 2,
                                  "--out_dir", workdir / out, *extra)
        return result, computed

    real_row = QualityEval.model_row
    straight, computed = run("eval_straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    n_settings = len(computed)
    assert n_settings == 5  # the defaults, 2 and 4 steps, guidance 2, no self-cond
    assert run("eval_resumed", interrupt_at=3)[0].returncode == 130
    saved = json.loads((workdir / "eval_resumed" / "partial.json").read_text())["pieces"]
    assert sum(key.startswith('["row"') for key in saved) == 2
    resumed, computed = run("eval_resumed")
    assert resumed.returncode == 0 and "resuming: 3 finished piece(s)" in resumed.stderr  # references + 2 rows
    assert len(computed) == n_settings - 2
    timing = {"seconds_per_sample", "latency_b1_s"}
    rows = [[{k: v for k, v in r.items() if k not in timing}
             for r in json.loads((workdir / d / "results.json").read_text())["rows"]]
            for d in ("eval_straight", "eval_resumed")]
    assert rows[0] == rows[1]
    assert not (workdir / "eval_resumed" / "partial.json").exists()
    run("eval_other", interrupt_at=2)
    other, computed = run("eval_other", "--num_prompts", 2)
    assert other.returncode == 0 and "resuming" not in other.stderr and len(computed) == n_settings


def test_bench_runs_and_writes_outputs(trained, trained_ar, workdir):
    out = workdir / "bench"
    result = dimba("bench", "--quick", "true", "--threads", 1, "--ckpt_path", trained, "--ar_ckpt_path", trained_ar,
                   "--out_dir", out, cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((out / "bench.json").read_text())
    models = {r["model"] for r in data["generation"]}
    assert models == {"AR", "DIMBA"} and all(r["tokens_per_s"] > 0 for r in data["generation"])
    assert set(data["training"]) == {"DIMBA", "AR"} and data["length_sweep"]["lengths"] == [256, 512]
    assert (out / "bench.md").read_text().startswith("Machine:") and (out / "bench.png").stat().st_size > 0
    assert "1 torch threads" in data["machine"]
    assert data["compiled"] is False and "generation eager" in (out / "bench.md").read_text()


@pytest.mark.slow
def test_bench_compiled(trained, trained_ar, workdir):
    out = workdir / "bench_compiled"
    result = dimba("bench", "--quick", "true", "--compile", "true", "--batches", "[1]", "--threads", 1, "--ckpt_path",
                   trained,
                   "--ar_ckpt_path", trained_ar, "--out_dir", out, cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((out / "bench.json").read_text())
    assert data["compiled"] == "default" and "generation torch.compile" in (out / "bench.md").read_text()
    assert {r["model"] for r in data["generation"]} == {"AR", "DIMBA"}


def test_curves_plot_from_a_training_run(trained, workdir):
    out = workdir / "curves.png"
    run_dir = trained.parents[1]  # <save_dir>/<name>, holding the event files
    result = dimba_in_process("curves", "--runs", f"[{run_dir}]", "--out", out)
    assert result.returncode == 0, result.stderr[-2000:]
    numbers = json.loads(out.with_suffix(".json").read_text())
    acc = numbers[run_dir.name]["acc_by_t"]
    assert set(acc) == {"0.1", "0.3", "0.5", "0.7", "0.9"} and all(0 <= v <= 1 for v in acc.values())
    assert out.stat().st_size > 0
    empty = workdir / "no_events"
    empty.mkdir(exist_ok=True)
    missing = dimba_in_process("curves", "--runs", f"[{empty}]", "--out", out)
    assert missing.returncode == 2 and missing.stderr.strip() == f"error: no TensorBoard event files under {empty}"


def test_compare_puts_one_row_of_several_evals_side_by_side(tmp_path):
    def fake_eval(name, gen_ppl):
        row = lambda label, model, ppl: {"label": label, "model": model, "gen_ppl": ppl, "entropy_bits": 8.0,
                                         "samples": [{"prompt": "a", "completion": f"{name} text"}]}
        folder = tmp_path / name
        folder.mkdir()
        rows = [row("real continuation", "reference", 50.0), row("random tokens by corpus frequency", "random", 8e3),
                row("DIMBA ddim 32 steps", "dimba", gen_ppl)]
        (folder / "results.json").write_text(json.dumps({"rows": rows}))
        return folder

    runs = [fake_eval("rung_a", 4000.0), fake_eval("rung_b", 3000.0)]
    out = tmp_path / "ladder.png"
    runs_flag = f"[{','.join(map(str, runs))}]"
    result = dimba_in_process("compare", "--runs", runs_flag, "--row", "DIMBA ddim 32 steps", "--out", out)
    assert result.returncode == 0, result.stderr[-2000:]
    table = out.with_suffix(".md").read_text()
    assert "| rung_a | 4e+03 |" in table and "| rung_b | 3e+03 |" in table and "rung_b text" in table
    assert table.count("| real continuation |") == 1 and out.stat().st_size > 0
    missing = dimba_in_process("compare", "--runs", runs_flag, "--row", "DIMBA ddim 64 steps", "--out", out)
    assert_clean_failure(missing, "has no row 'DIMBA ddim 64 steps'")
    (runs[0] / "results.json").write_text('{"rows": [1, 2]}')
    assert_clean_failure(dimba_in_process("compare", "--runs", runs_flag, "--row", "x", "--out", out),
                         "is not a results file of `dimba eval`")


def test_compare_curves_plots_steps_of_several_runs(tmp_path):
    def run(name, kind, ppl_by_steps):
        rows = [{"label": "real continuation", "model": "reference", "gen_ppl": 50.0},
                {"label": "AR, temperature 1", "model": "ar", "gen_ppl": 90.0}]
        rows += [{"label": f"{kind} {n}", "model": kind, "steps": n, "sampler": "ddim", "reveal": "random",
                  "gen_ppl": ppl, "guidance": 1.0, "self_condition": True} for n, ppl in ppl_by_steps.items()]
        folder = tmp_path / name
        folder.mkdir()
        (folder / "results.json").write_text(json.dumps({"rows": rows}))
        return folder

    runs = [run("gauss", "dimba", {8: 4000.0, 32: 3000.0}), run("mdlm", "masked", {8: 900.0, 32: 800.0})]
    results = json.loads((runs[1] / "results.json").read_text())
    results["rows"] += [{**r, "gen_ppl": r["gen_ppl"] / 2, "matched_by": "temperature"} for r in results["rows"][2:]]
    (runs[1] / "results.json").write_text(json.dumps(results))
    out = tmp_path / "curves.png"
    compare = lambda *flags: dimba_in_process("compare", "--runs", f"[{runs[0]},{runs[1]}]", *flags, "--out", out)
    result = compare()
    assert result.returncode == 0, result.stderr[-2000:]
    assert out.stat().st_size > 10_000
    assert result.stdout.splitlines()[:3] == ["gauss: dimba ddim random", "mdlm: masked ddim random",
                                              "mdlm: masked ddim random (entropy matched by temperature)"]
    matched = compare("--matched_only", "true")
    assert matched.stdout.splitlines() == ["mdlm: masked ddim random (entropy matched by temperature)", str(out)]
    assert_clean_failure(compare("--row", "x", "--matched_only", "true"), "--matched_only goes with the curves")


def test_step_curves_draw_the_ar_level_of_every_run_with_its_name(tmp_path):
    """Two AR checkpoints (1000 and 2000 steps) give rows with the same label: both levels are drawn, each named
    by its run, labels at the left edge of the axes."""
    from dimba.eval.plots import steps_across_runs

    ref = {"label": "real continuation", "model": "reference", "gen_ppl": 50.0}
    curve = [{"label": f"dimba {n}", "model": "dimba", "steps": n, "sampler": "ddim", "reveal": "random",
              "gen_ppl": 400.0 / n, "guidance": 1.0, "self_condition": True} for n in (8, 32)]
    runs = {name: [ref, {"label": "AR, top-p 0.8", "model": "ar", "gen_ppl": ppl}, *curve]
            for name, ppl in (("ar1000", 34.0), ("ar2000", 20.0))}
    ax = steps_across_runs(runs, tmp_path / "c.png").axes[0]
    labels = {t.get_text(): t.xy for t in ax.texts}
    assert labels == {"real continuation": (0.01, 50.0), "ar1000: AR, top-p 0.8": (0.01, 34.0),
                      "ar2000: AR, top-p 0.8": (0.01, 20.0)}
    assert sorted(line.get_ydata()[0] for line in ax.lines if line.get_linestyle() == ":") == [20.0, 34.0, 50.0]


def test_bench_builds_each_kind_from_stacked_configs_as_the_cli_does():
    """`dimba bench` without checkpoints: the shipped base.yaml, then a model file of another kind keeps the shared
    backbone sizes it does not set and drops what the new kind does not take: LightningCLI's own parser does it."""
    from dimba.cli.fit import model_from_configs
    from dimba.config import config_path

    base = ("--config", config_path("base.yaml"))
    ar = model_from_configs(*base, "--model", config_path("model/ar.yaml"))
    assert ar.kind == "ar" and ar.net_config.n_layers == 6 and ar.net_config.chunk_size == 64
    assert ar.vocab_size == 4096 and ar.seq_len == 128  # from the data config
    masked = model_from_configs(*base, "--model", config_path("model/masked.yaml"))
    assert masked.kind == "masked" and masked.net_config.n_layers == 3
    hybrid = model_from_configs(*base)  # the default: base.yaml names configs/model/hybrid.yaml
    assert hybrid.kind == "hybrid" and hybrid.denoiser_config.d_embed == 64 and hybrid.denoiser_config.head == "untied"
    assert hybrid.diffusion_config.skip_logits and hybrid.denoiser_config.wide_input and hybrid.net_config.n_layers == 2
    gaussian = model_from_configs(*base, "--model", config_path("model/gaussian.yaml"))
    assert gaussian.kind == "dimba" and gaussian.denoiser_config.head == "tied" and gaussian.net_config.n_layers == 3
    assert gaussian.time_warp_config.enabled and not gaussian.denoiser_config.wide_input


def test_compare_plots_quality_against_latency_with_the_pareto_frontier(tmp_path):
    """Entropy-matched rows of `dimba eval` runs joined with the batch-1 latency `dimba bench` measured for the same
    checkpoint and steps; the frontier holds the points nothing beats on both axes."""
    from dimba.eval.plots import dominates

    def run(name, ckpt, kind, ppl_by_steps):
        rows = [{"label": f"{kind} {n}", "model": kind, "steps": n, "gen_ppl": ppl, "matched_by": "temperature"}
                for n, ppl in ppl_by_steps.items()]
        folder = tmp_path / name
        folder.mkdir()
        (folder / "results.json").write_text(json.dumps({"settings": {"ckpt_path": str(ckpt)}, "rows": rows}))
        return folder

    runs = [run("block8", tmp_path / "b8.ckpt", "hybrid", {2: 900.0, 4: 700.0}),
            run("ar", tmp_path / "ar.ckpt", "ar", {32: 40.0})]
    bench = tmp_path / "bench"
    bench.mkdir()
    generation = [{"model": "DIMBA hybrid block 8", "steps": 2, "length": 1024, "batch": 1, "latency_s": 0.4},
                  {"model": "DIMBA hybrid block 8", "steps": 4, "length": 1024, "batch": 1, "latency_s": 0.7},
                  {"model": "AR", "steps": None, "length": 1024, "batch": 1, "latency_s": 0.9},
                  {"model": "AR", "steps": None, "length": 128, "batch": 1, "latency_s": 0.1}]
    (bench / "bench.json").write_text(json.dumps({"settings": {"ckpt_path": str(tmp_path / "b8.ckpt"),
                                                               "ar_ckpt_path": str(tmp_path / "ar.ckpt")},
                                                  "generation": generation}))
    out = tmp_path / "pareto.png"
    result = dimba_in_process("compare", "--runs", f"[{runs[0]},{runs[1]}]", "--latency", f"[{bench}]", "--out", out)
    assert result.returncode == 0, result.stderr[-2000:]
    table = out.with_suffix(".md").read_text()
    assert "| block8, 2 steps | 900 | 0.4 |" in table and "| ar | 40 | 0.9 |" in table and out.stat().st_size > 0
    a, b = {"latency_s": 0.4, "gen_ppl": 900.0}, {"latency_s": 0.7, "gen_ppl": 700.0}
    assert not dominates(a, b) and not dominates(b, a) and dominates({"latency_s": 0.3, "gen_ppl": 700.0}, b)


def test_the_block_pareto_script_plots_points_of_several_sittings_against_their_own_ar(tmp_path):
    """scripts/block_pareto.py, the docs' plot: latency counts as a ratio to the AR timed in the same sitting, so
    a point twice as slow as its own AR sits at 2 whatever the machine's load was; dominated points are not on
    the frontier it prints."""
    points = tmp_path / "points.csv"
    points.write_text("run,steps,gen_ppl,latency_ms,ar_latency_ms,sitting\n"
                      "AR,,30,1000,1000,a\n"
                      "fast,1,900,600,1200,b\n"      # 0.5x AR: on the frontier
                      "slow,4,950,2400,1200,b\n")    # 2x AR and worse than fast: dominated
    out = tmp_path / "pareto.png"
    result = subprocess.run([sys.executable, REPO / "scripts" / "block_pareto.py", "--points", points, "--out", out],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    frontier = [line for line in result.stdout.splitlines() if line.startswith("frontier:")]
    assert frontier == ["frontier: fast, 1 steps: gen-PPL 900 at 0.50x AR's latency",
                        "frontier: AR: gen-PPL 30 at 1.00x AR's latency"]
    assert out.stat().st_size > 0
