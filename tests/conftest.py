import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.corpus import write_text_corpus

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

# Two cores with another process around: busy-waiting OpenMP threads slow every op several-fold.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# ------------------------------------------------------------------ the CLI as a user runs it
def dimba(*args, cwd, env_extra=None, timeout=300):
    """Run `python -m dimba ARGS` (the console script's module) in a subprocess."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_WAIT_POLICY="PASSIVE")
    env.update(env_extra or {})
    cmd = [sys.executable, "-m", "dimba", *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def fit_args(root, name, *extra, config="base.yaml"):
    """A few steps of a tiny model on the test corpus, logging under root/name."""
    return ["fit", "--config", CONFIGS / config, "--config", CONFIGS / "tiny.yaml",
            "--data.source", root / "corpus", "--trainer.default_root_dir", root / name,
            "--trainer.logger.init_args.save_dir", root / name, *extra]


def ckpt_dir(root, name, logger_name="base"):
    """Checkpoints follow the logger: <save_dir>/<name>/checkpoints (name "base" or "ar" from the config)."""
    return root / name / logger_name / "checkpoints"


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    write_text_corpus(root / "corpus")
    os.environ["DIMBA_CACHE"] = str(root / "cache")
    return root


@pytest.fixture(scope="session")
def trained(workdir):
    """A tiny DIMBA checkpoint written by `dimba fit`."""
    result = dimba(*fit_args(workdir, "run"), cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = ckpt_dir(workdir, "run") / "last.ckpt"
    assert ckpt.exists()
    return ckpt


@pytest.fixture(scope="session")
def trained_ar(workdir):
    """A tiny AR-baseline checkpoint written by `dimba fit --config configs/ar.yaml`."""
    result = dimba(*fit_args(workdir, "ar", config="ar.yaml"), cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = ckpt_dir(workdir, "ar", "ar") / "last.ckpt"
    assert ckpt.exists()
    return ckpt
