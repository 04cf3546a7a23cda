"""What the tests share: running the CLI as a user does, tiny models, and callbacks that tests inject through
`--trainer.callbacks+=tests.helpers.NAME`."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
TINY_NET = dict(d_model=32, n_layers=2, d_state=8, headdim=8, chunk_size=4, impl="torch")


# ------------------------------------------------------------------ the CLI as a user runs it
def dimba(*args, cwd, env_extra=None, timeout=300):
    """Run `python -m dimba ARGS` (the console script's module) in a subprocess."""
    # The repository first, then whatever the caller's path holds (the GPU machine's carried wheels live there).
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=path, OMP_WAIT_POLICY="PASSIVE")
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
    # Log records (warnings of the data path, say) go to this call's stderr, as they would in a process of its own.
    handler = logging.StreamHandler(err)
    logging.getLogger().addHandler(handler)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as exit_info:
            code = exit_info.code if isinstance(exit_info.code, int) else (0 if exit_info.code is None else 1)
        except Exception:  # noqa: BLE001 - a traceback is what the caller asserts against
            import traceback

            err.write(traceback.format_exc())
            code = 1
        finally:
            logging.getLogger().removeHandler(handler)
    return InProcessResult(code, out.getvalue(), err.getvalue())


def fit_args(root, name, *extra, config=("base.yaml",), model="gaussian.yaml"):
    """A few steps of a tiny model on the test corpus, logging under root/name; `config`: the stack before tiny.yaml;
    `model`: a file of configs/model/ given with --model after it (None: the stack's own model). The default pins
    the Gaussian DIMBA (the paper's corruption), whose samplers, warp and guidance most tests check; the default
    config's model, the hybrid, is `model=None`."""
    configs = [a for c in ((config,) if isinstance(config, str) else config) for a in ("--config", CONFIGS / c)]
    if model is not None:
        configs += ["--model", CONFIGS / "model" / model]
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


def logged_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} from every TensorBoard event file under run_dir."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, list[tuple[int, float]]] = {}
    for f in sorted(run_dir.rglob("events.out.tfevents*")):
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return scalars


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


SENTENCES = ["the cat sat on the mat and looked at the", "a dog ran in the park with a red ball",
             "my friend reads old books by the window every day", "some birds sing loud songs in the tall green trees"]
LEARNING_NET = dict(d_model=64, n_layers=2, d_state=16, headdim=16, chunk_size=16, impl="torch")


def sentence_ids():
    """(vocabulary size, (4, 10) word ids of SENTENCES) for the learning tests."""
    words = sorted({w for s in SENTENCES for w in s.split()})
    return len(words), torch.tensor([[words.index(w) for w in s.split()] for s in SENTENCES])


def overfit(model, ids, steps: int, lr: float = 3e-3):
    """Train `model` on ids (repeated 4x per batch) without a Trainer; return it in eval mode and the last loss."""
    model = no_trainer(model)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    for step in range(steps):
        loss = model.training_step(ids.repeat(4, 1), step)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), loss.item()


def no_trainer(model):
    """Let training_step run without a Trainer (its self.log calls need one)."""
    model.log = model.log_dict = lambda *a, **k: None
    return model


# ------------------------------------------------------------------ callbacks injected into `dimba fit`
class RecordShards(L.Callback):
    """Each rank writes the training blocks it saw in its first epoch and its time warp at the end of training to
    $DIMBA_TEST_RECORD.<rank> as JSON."""

    def __init__(self):
        self.blocks = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == 0:
            self.blocks += batch.tolist()

    def on_train_end(self, trainer, pl_module):
        warp = pl_module.warp.state_dict() if getattr(pl_module, "warp", None) is not None else None
        record = {"blocks": self.blocks, "epoch_batches": len(trainer.train_dataloader),
                  "warp": None if warp is None else {"t": warp["t"].tolist(), "loss": warp["loss"].tolist(),
                                                     "count": warp["count"]}}
        with open(f"{os.environ['DIMBA_TEST_RECORD']}.{trainer.global_rank}", "w") as fh:
            json.dump(record, fh)


skip_without_transformers = pytest.mark.skipif(
    __import__("importlib").util.find_spec("transformers") is None, reason="needs transformers (the dev extra)")


class RecordMetrics(L.Callback):
    """Write rank 0's validation metrics (the logged, rank-reduced values) to $DIMBA_TEST_RECORD as JSON."""

    def on_validation_end(self, trainer, pl_module):
        if trainer.global_rank == 0:
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val")}
            with open(os.environ["DIMBA_TEST_RECORD"], "w") as fh:
                json.dump(metrics, fh)


class MarkStep(L.Callback):
    """Create the file $DIMBA_TEST_RECORD once training has finished 2 optimizer steps (tests poll for it)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= 2:
            Path(os.environ["DIMBA_TEST_RECORD"]).touch()
