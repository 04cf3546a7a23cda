"""What the tests share: running the CLI as a user does, tiny models, and callbacks that tests inject through
`--trainer.callbacks+=tests.helpers.NAME`."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
TINY_NET = dict(d_model=32, n_layers=2, d_state=8, headdim=8, chunk_size=4, impl="torch")


# ------------------------------------------------------------------ the CLI as a user runs it
def dimba(*args, cwd, env_extra=None, timeout=300):
    """Run `python -m dimba ARGS` (the console script's module) in a subprocess."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_WAIT_POLICY="PASSIVE")
    env.update(env_extra or {})
    cmd = [sys.executable, "-m", "dimba", *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


class InProcessResult:
    """What `dimba_in_process` returns: like subprocess.CompletedProcess."""

    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def dimba_in_process(*args) -> InProcessResult:
    """Run `dimba ARGS` through `dimba.cli.main` in this process (no interpreter start-up): for checks of
    what a verb does with its input, where the console script itself is not the point."""
    from dimba.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as exit_info:
            code = exit_info.code if isinstance(exit_info.code, int) else (0 if exit_info.code is None else 1)
        except Exception:  # noqa: BLE001 - a traceback is what the caller asserts against
            import traceback

            err.write(traceback.format_exc())
            code = 1
    return InProcessResult(code, out.getvalue(), err.getvalue())


def fit_args(root, name, *extra, config=("base.yaml",)):
    """A few steps of a tiny model on the test corpus, logging under root/name."""
    configs = [a for c in ((config,) if isinstance(config, str) else config) for a in ("--config", CONFIGS / c)]
    return ["fit", *configs, "--config", CONFIGS / "tiny.yaml", "--data.source", root / "corpus",
            "--trainer.default_root_dir", root / name, "--trainer.logger.init_args.save_dir", root / name, *extra]


def ckpt_dir(root, name, logger_name="base"):
    """Checkpoints follow the logger: <save_dir>/<name>/checkpoints (name "base" or "ar" from the config)."""
    return root / name / logger_name / "checkpoints"


def assert_clean_failure(result, message):
    """One `error:` line with `message`, exit code 2, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    assert message in result.stderr, result.stderr[-2000:]


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]


# ------------------------------------------------------------------ tiny models
def tiny_dimba(vocab_size=40, seq_len=16, net=None, **configs):
    """A tiny DimbaLM on the torch path; `net`, `denoiser`, `diffusion`, `prompt`, `optim` override fields."""
    from dimba.training.dimba_lm import DimbaLM

    denoiser = {"d_embed": 8, **configs.pop("denoiser", {})}
    return DimbaLM(net={**TINY_NET, **(net or {})}, denoiser=denoiser, vocab_size=vocab_size, seq_len=seq_len,
                   **configs)


def tiny_ar(vocab_size=50, seq_len=16, net=None, **configs):
    from dimba.training.ar_lm import ARLM

    return ARLM(net={**TINY_NET, **(net or {})}, vocab_size=vocab_size, seq_len=seq_len, **configs)


def no_trainer(model):
    """Let training_step run without a Trainer (its self.log calls need one)."""
    model.log = model.log_dict = lambda *a, **k: None
    return model


# ------------------------------------------------------------------ callbacks injected into `dimba fit`
class RecordBatches(L.Callback):
    """Append each rank's first training batch (token ids) to $DIMBA_TEST_RECORD as JSON lines."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            with open(os.environ["DIMBA_TEST_RECORD"], "a") as fh:
                fh.write(json.dumps({"rank": trainer.global_rank, "batch": batch.tolist()}) + "\n")


skip_without_transformers = pytest.mark.skipif(
    __import__("importlib").util.find_spec("transformers") is None, reason="needs transformers (the dev extra)")


class RecordMetrics(L.Callback):
    """Write rank 0's validation metrics (the logged, rank-reduced values) to $DIMBA_TEST_RECORD as JSON."""

    def on_validation_end(self, trainer, pl_module):
        if trainer.global_rank == 0:
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val")}
            with open(os.environ["DIMBA_TEST_RECORD"], "w") as fh:
                json.dump(metrics, fh)
