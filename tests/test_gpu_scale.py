"""scripts/gpu_scale.sh, the one prepared GPU call, dry-run on the CPU: every phase runs and the table is made,
so the script is known to work before a device is drawn."""

import json
import os
import subprocess
import tarfile

from tests.helpers import REPO


def test_the_gpu_scale_call_runs_every_phase_in_its_dry_run(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), DIMBA_CACHE=str(tmp_path / "cache"))
    result = subprocess.run(["bash", REPO / "scripts" / "gpu_scale.sh", "--dry-run", "--work", tmp_path / "work",
                             "--out", tmp_path / "out"], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "work" / "summary.json").read_text())
    runs = {"judge", "ar", "masked", "dimba", "dimba_block", "ps_ar", "ps_masked", "ps_dimba"}
    assert runs <= set(summary) and all(summary[r]["steps"] == 3 for r in runs)
    for name in ("masked", "dimba", "dimba_block"):
        assert summary[name]["gen_ppl_8"] > 1 and summary[name]["x_ar_32"] > 0, name
    assert all(0 <= summary[r]["exact_match"] <= 1 and summary[r]["epochs"] > 0 for r in runs if r.startswith("ps_"))
    assert summary["latency"] and "| dimba_block |" in result.stdout  # the table is printed
    with tarfile.open(tmp_path / "out" / "gpu_scale.tar.gz") as tar:
        names = tar.getnames()
    assert "summary.md" in names and any(n.startswith("logs/fit_") for n in names) and "bench/bench.json" in names
