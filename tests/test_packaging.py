"""The package as a user installs it from a wheel: built from this checkout, installed into a fresh virtual
environment, run from a folder outside the repository. The shipped configs must travel with it."""

import subprocess
import sys
import sysconfig
from pathlib import Path

from tests.helpers import REPO


def run(*cmd, cwd, timeout=600):
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                            env={"PATH": "/usr/bin:/bin", "OMP_WAIT_POLICY": "PASSIVE", "HOME": str(cwd),
                                 "DIMBA_CACHE": str(Path(cwd) / "cache")})
    assert result.returncode == 0, (cmd, result.stdout[-2000:], result.stderr[-3000:])
    return result.stdout


def test_a_wheel_install_finds_its_configs_trains_and_benchmarks(tmp_path, workdir):
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", REPO, "-w", dist,
        cwd=tmp_path)
    wheel = next(dist.glob("dimba-*.whl"))
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    run(python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel, cwd=tmp_path)
    # The dependencies (torch, lightning, ...) from this environment's site-packages, appended after the fresh
    # venv's own: its `dimba` is the wheel's (this environment's editable install is not read from there).
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path).strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    dimba = venv / "bin" / "dimba"
    where = run(python, "-c", "import dimba; print(dimba.__file__)", cwd=tmp_path).strip()
    assert where.startswith(str(site)), where
    base = Path(run(dimba, "configs", "--name", "base.yaml", cwd=tmp_path).strip())
    assert base.is_file() and str(base).startswith(str(site))
    assert "model/hybrid.yaml" in run(dimba, "configs", cwd=tmp_path)
    tiny = base.parent / "tiny.yaml"
    run(dimba, "fit", "--config", base, "--config", tiny, "--data.source", workdir / "corpus", "--trainer.max_steps",
        2, "--trainer.default_root_dir", tmp_path / "runs", "--trainer.logger.init_args.save_dir", tmp_path / "runs",
        cwd=tmp_path)
    assert (tmp_path / "runs" / "base" / "checkpoints" / "last.ckpt").is_file()
    run(dimba, "bench", "--quick", "true", "--threads", 1, "--out_dir", tmp_path / "bench", cwd=tmp_path)
    assert (tmp_path / "bench" / "bench.json").is_file()
