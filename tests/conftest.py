import os

import pytest
import torch

from tests.corpus import write_text_corpus
from tests.helpers import ckpt_dir, dimba, fit_args

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


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    write_text_corpus(root / "corpus")
    os.environ["DIMBA_CACHE"] = str(root / "cache")
    return root


@pytest.fixture(scope="session")
def trained(workdir):
    """A tiny Gaussian DIMBA checkpoint written by `dimba fit --model configs/model/gaussian.yaml`."""
    result = dimba(*fit_args(workdir, "run"), cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = ckpt_dir(workdir, "run") / "last.ckpt"
    assert ckpt.exists()
    return ckpt


@pytest.fixture(scope="session")
def trained_ar(workdir):
    """A tiny AR-baseline checkpoint written by `dimba fit --config base.yaml --config ar.yaml`."""
    result = dimba(*fit_args(workdir, "ar", config=("base.yaml", "ar.yaml"), model=None), cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = ckpt_dir(workdir, "ar", "ar") / "last.ckpt"
    assert ckpt.exists()
    return ckpt


@pytest.fixture(scope="session")
def trained_hybrid(workdir):
    """A tiny DIMBA checkpoint of the default config (the hybrid corruption, blocks of 4), by `dimba fit`."""
    result = dimba(*fit_args(workdir, "hybrid", model=None), cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = ckpt_dir(workdir, "hybrid") / "last.ckpt"
    assert ckpt.exists()
    return ckpt


@pytest.fixture(scope="session")
def trained_hybrid_whole(workdir):
    """The default config's hybrid DIMBA without blocks (`net.block_size 0`), by `dimba fit`."""
    result = dimba(*fit_args(workdir, "hybrid_whole", "--model.init_args.net.block_size", 0, model=None), cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = ckpt_dir(workdir, "hybrid_whole") / "last.ckpt"
    assert ckpt.exists()
    return ckpt
