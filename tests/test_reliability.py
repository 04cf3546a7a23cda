"""Runs survive bad numbers, interruption and crashes while saving; checkpoints are portable."""

import signal
import subprocess
import sys
import time

import lightning as L
import pytest
import torch

from dimba.errors import DimbaError
from dimba.sampling import SamplingConfig
from dimba.training.callbacks import NonFiniteGuard
from dimba.training.checkpoint import load_for_inference
from dimba.training.dimba_lm import DimbaLM
from tests.helpers import REPO, ckpt_dir, fit_args


class PoisonedDimba(DimbaLM):
    """Returns a NaN loss at the steps listed in `poison`."""

    def __init__(self, poison=(), **kw):
        super().__init__(**kw)
        self.poison = set(poison)

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if self.global_step in self.poison else loss


def tiny_model(**kw):
    return PoisonedDimba(vocab_size=30, seq_len=8, denoiser=dict(d_embed=8), optim=dict(warmup_steps=1),
                         net=dict(d_model=16, n_layers=1, d_state=8, headdim=8, chunk_size=8, impl="torch"), **kw)


def loader():
    data = torch.randint(0, 30, (32, 8))
    return torch.utils.data.DataLoader(data, batch_size=4)


def fit(model, guard, steps):
    trainer = L.Trainer(max_steps=steps, callbacks=[guard], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(model, loader())


def test_nonfinite_steps_are_skipped_and_counted():
    model, guard = tiny_model(poison={2}), NonFiniteGuard(max_in_a_row=3)

    class Snapshot(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 2:
                self.before = {k: v.clone() for k, v in pl_module.state_dict().items()}

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 3 and not hasattr(self, "after"):
                self.after = {k: v.clone() for k, v in pl_module.state_dict().items()}

    snap = Snapshot()
    trainer = L.Trainer(max_steps=5, callbacks=[guard, snap], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(model, loader())
    assert guard.skipped == 1 and guard.in_a_row == 0
    for k in snap.before:  # the poisoned step changed nothing
        torch.testing.assert_close(snap.after[k], snap.before[k], rtol=0, atol=0)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_too_many_nonfinite_steps_in_a_row_stop_the_run():
    model, guard = tiny_model(poison=set(range(2, 100))), NonFiniteGuard(max_in_a_row=3)
    with pytest.raises(DimbaError, match="3 optimizer steps in a row had non-finite gradients"):
        fit(model, guard, 20)


def test_checkpoint_save_is_atomic(tmp_path, monkeypatch):
    """A crash while writing a checkpoint leaves the previous file whole."""
    import fsspec.implementations.local as local

    model = tiny_model()
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", default_root_dir=tmp_path)
    trainer.fit(model, loader())
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    good = path.read_bytes()

    def crash_half_way(self, data):
        self.f.write(data[: len(data) // 2])
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(local.LocalFileOpener, "write", crash_half_way)
    with pytest.raises(OSError, match="simulated"):
        trainer.save_checkpoint(path)
    monkeypatch.undo()
    assert path.read_bytes() == good
    torch.load(path, map_location="cpu", weights_only=False)


def test_bf16_checkpoint_loads_and_samples_on_cpu(trained, tmp_path):
    ckpt = torch.load(trained, map_location="cpu", weights_only=False)
    ckpt["state_dict"] = {k: v.to(torch.bfloat16) if v.is_floating_point() else v
                          for k, v in ckpt["state_dict"].items()}
    path = tmp_path / "bf16.ckpt"
    torch.save(ckpt, path)
    model = load_for_inference(path, "cpu")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    completions = model.generate([[5, 6]], 4, SamplingConfig(steps=2, seed=0))
    assert len(completions[0]) == 4


def signal_running_fit(workdir, name, sig):
    """Start `dimba fit` (endless), send `sig` once it has trained 2 steps; return (returncode, stderr)."""
    mark = workdir / f"{name}.step"
    args = fit_args(workdir, name, "--trainer.max_steps", "100000", "--trainer.val_check_interval", "1000",
                    "--trainer.callbacks+=tests.helpers.MarkStep")
    env = dict(__import__("os").environ, PYTHONPATH=str(REPO), DIMBA_TEST_RECORD=str(mark))
    proc = subprocess.Popen([sys.executable, "-m", "dimba", *map(str, args)], cwd=workdir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not mark.exists() and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    return proc.returncode, stderr


def saved_step(workdir, name):
    return torch.load(ckpt_dir(workdir, name) / "last.ckpt", map_location="cpu", weights_only=False)["global_step"]


def test_sigusr1_stops_with_a_checkpoint(workdir):
    returncode, stderr = signal_running_fit(workdir, "sigusr1", signal.SIGUSR1)
    assert returncode == 0, stderr[-2000:]
    assert "SIGUSR1: stopping after step" in stderr
    assert saved_step(workdir, "sigusr1") > 0


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(workdir):
    returncode, stderr = signal_running_fit(workdir, "sigterm", signal.SIGTERM)
    assert returncode == 143, stderr[-2000:]
    assert "stopped by SIGTERM" in stderr and "Traceback" not in stderr
    assert saved_step(workdir, "sigterm") > 0


def test_resuming_into_another_model_shape_names_the_mismatch(tmp_path):
    """Through the CLI, LightningCLI rebuilds the model from the checkpoint's hyper-parameters; a program
    that builds its own model gets one clear line instead of a size-mismatch traceback."""
    small = tiny_model()
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(small, loader())
    path = tmp_path / "small.ckpt"
    trainer.save_checkpoint(path)
    wider = PoisonedDimba(vocab_size=30, seq_len=8, denoiser=dict(d_embed=8),
                          net=dict(d_model=32, n_layers=1, d_state=8, headdim=8, chunk_size=8, impl="torch"))
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    with pytest.raises(DimbaError, match=r"net.in_proj.weight has shape \(16, 16\) but its configuration builds"):
        trainer.fit(wider, loader(), ckpt_path=path)


def test_a_run_stopped_by_max_time_saves_its_last_step(workdir):
    """Periodic checkpoints every 250 steps; the time limit falls between them. Seen here: the last 75
    steps of a 28-minute run were lost before CheckpointOnStop existed."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tests.helpers import dimba
    args = fit_args(workdir, "timed", "--trainer.max_steps", "100000", "--trainer.max_time", "00:00:00:08",
                    "--trainer.val_check_interval", "100000", "--trainer.limit_val_batches", "0")
    result = dimba(*args, cwd=workdir)
    assert result.returncode == 0, result.stderr[-2000:]
    ckpt = torch.load(ckpt_dir(workdir, "timed") / "last.ckpt", map_location="cpu", weights_only=False)
    events = EventAccumulator(str(next((workdir / "timed" / "base").glob("events.out.tfevents*"))))
    events.Reload()
    last_logged = events.Scalars("train/loss")[-1].step
    assert ckpt["global_step"] == last_logged + 1 and ckpt["global_step"] > 3


@pytest.mark.slow  # three fits timed by the wall clock (40 s); the suite's budget
def test_resume_after_the_time_limit_needs_more_time(workdir):
    """A run stopped by max_time, resumed with the same max_time, says so instead of ending without a step."""
    from tests.helpers import dimba
    args = fit_args(workdir, "timed_resume", "--trainer.max_steps", "100000", "--trainer.max_time", "00:00:00:02")
    first = dimba(*args, cwd=workdir)
    assert first.returncode == 0, first.stderr[-3000:]
    last = ckpt_dir(workdir, "timed_resume") / "last.ckpt"
    assert last.exists()
    again = dimba(*args, "--ckpt_path", last, cwd=workdir)
    assert again.returncode == 2 and "raise --trainer.max_time" in again.stderr, again.stderr[-2000:]
    longer = dimba(*[a if a != "00:00:00:02" else "00:00:00:04" for a in args], "--ckpt_path", last, cwd=workdir)
    assert longer.returncode == 0, longer.stderr[-3000:]


RESUME_CONFIG = """
trainer:
  max_steps: {max_steps}
  val_check_interval: 3
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args:
        save_last: true
        every_n_train_steps: 4
    - class_path: dimba.training.callbacks.NonFiniteGuard
    - class_path: dimba.training.callbacks.CheckpointOnStop
    - class_path: dimba.training.callbacks.EMA
      init_args:
        decay: 0.9
model:
  init_args:
    optim:
      lr_decay_steps: 100
"""


def logged_losses(run_dir):
    from tests.helpers import logged_scalars
    return dict(logged_scalars(run_dir)["train/loss"])


def assert_same_tensors(a, b, where=""):
    """Nested dicts / lists of tensors and numbers, equal bit for bit."""
    if torch.is_tensor(a):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.parametrize("model", [pytest.param("gaussian.yaml", marks=pytest.mark.slow), None],
                         ids=["gaussian", "default_hybrid"])
def test_a_run_killed_with_sigkill_resumes_exactly(workdir, tmp_path, model):
    """Uninterrupted vs killed (SIGKILL) and resumed, on a corpus of a few batches per epoch and (for the
    Gaussian model) a time-warp window the run fills: the final checkpoints are equal tensor by tensor (EMA and
    raw weights, optimizer moments, LR schedule, learned warp, data position) and so is every loss logged after
    the resume. The default config's hybrid model (no warp) is what `dimba fit --config configs/base.yaml
    --ckpt_path ...` resumes."""
    from tests.corpus import write_text_corpus
    from tests.helpers import dimba

    corpus = write_text_corpus(tmp_path / "small_corpus", n_docs=4, sentences=12)
    total = 40
    for name, steps in (("straight", total), ("killed", 100_000)):
        (tmp_path / f"{name}.yaml").write_text(RESUME_CONFIG.format(max_steps=steps))

    warp = ["--model.init_args.time_warp.window", 64] if model else []  # a window the run fills

    def args(name, config, *extra):
        a = fit_args(tmp_path, name, "--config", tmp_path / config, *warp, *extra, model=model)
        a[a.index("--data.source") + 1] = corpus
        return a

    straight = dimba(*args("straight", "straight.yaml"), cwd=workdir)
    assert straight.returncode == 0, straight.stderr[-2000:]

    env = dict(__import__("os").environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "dimba", *map(str, args("killed", "killed.yaml"))], cwd=workdir,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = ckpt_dir(tmp_path, "killed") / "last.ckpt"
    deadline = time.time() + 120
    while time.time() < deadline and not ckpt.exists():
        time.sleep(0.05)
    proc.kill()  # SIGKILL: no handler runs, nothing is saved on the way out
    proc.wait()
    killed = torch.load(ckpt, map_location="cpu", weights_only=True)
    resumed_at = killed["global_step"]
    assert 0 < resumed_at < total
    resumed = dimba(*args("resumed", "straight.yaml", "--ckpt_path", ckpt), cwd=workdir)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    a = torch.load(ckpt_dir(tmp_path, "straight") / "last.ckpt", map_location="cpu", weights_only=True)
    b = torch.load(ckpt_dir(tmp_path, "resumed") / "last.ckpt", map_location="cpu", weights_only=True)
    # What the claims rest on: the run crossed epochs after the resume point, the warp was in use, and the
    # EMA average is not the raw weights.
    assert a["epoch"] > killed["epoch"] + 1 and a["global_step"] == total
    assert (a["time_warp"]["count"] >= a["time_warp"]["window"] // 2) if model else "time_warp" not in a
    assert any(not torch.equal(a["state_dict"][k], a["current_model_state"][k]) for k in a["state_dict"])
    for key in ("state_dict", "current_model_state", "optimizer_states", "lr_schedulers", "time_warp", "epoch",
                "global_step", "rng_state"):
        assert_same_tensors(a.get(key), b.get(key), key)

    expected = logged_losses(tmp_path / "straight")
    got = logged_losses(tmp_path / "resumed")
    after = sorted(s for s in expected if s >= resumed_at)
    assert after and sorted(got) == after
    assert [got[s] for s in after] == [expected[s] for s in after]  # bitwise: TensorBoard stores float32


@pytest.mark.slow
def test_bf16_mixed_default_model_stays_finite_for_300_steps(workdir):
    """The default model (configs/base.yaml's size, seq_len 128, batch 32) in bf16-mixed on CPU."""
    import math

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tests.helpers import CONFIGS, dimba
    args = ["fit", "--config", CONFIGS / "base.yaml", "--data.source", workdir / "corpus",
            "--data.tokenizer_vocab_size", "1024", "--trainer.precision", "bf16-mixed",
            "--trainer.max_steps", "300", "--trainer.max_time", "null", "--trainer.val_check_interval", "100",
            "--trainer.limit_val_batches", "1", "--trainer.log_every_n_steps", "1",
            "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", workdir / "bf16_300"]
    result = dimba(*args, cwd=workdir, timeout=1800)
    assert result.returncode == 0, result.stderr[-2000:]
    events = EventAccumulator(str(next((workdir / "bf16_300" / "base").glob("events.out.tfevents*"))),
                              size_guidance={"scalars": 0})
    events.Reload()
    losses = [e.value for e in events.Scalars("train/loss")]
    assert len(losses) == 300 and all(math.isfinite(v) for v in losses)
    assert "train/nonfinite_skipped" not in events.Tags()["scalars"]  # logged only when a step is skipped
    assert losses[-1] < losses[0]
    ckpt = torch.load(ckpt_dir(workdir, "bf16_300") / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 300
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


@pytest.mark.slow  # 40 s of two DDP ranks; the single-process SIGKILL resume tests run by default
def test_a_ddp_run_resumes_exactly(workdir, tmp_path):
    """Two CPU ranks, 2 steps then resumed to 4, against 4 steps straight: the same final checkpoint (weights,
    EMA, optimizer, time warp), each rank having continued its own shard where it stopped. (The first run's
    checkpoint is written when max_steps stops it, where Lightning's epoch counter moves on: the data position
    must follow the batches consumed, not that counter.)"""
    from tests.helpers import dimba

    ddp = ["--data.source", workdir / "corpus", "--trainer.accelerator", "cpu", "--trainer.devices", "2",
           "--trainer.strategy", "ddp", "--trainer.val_check_interval", "100", "--trainer.limit_val_batches", "0",
           "--model.init_args.optim.lr_decay_steps", "100"]  # the LR schedule must not depend on max_steps
    straight = dimba(*fit_args(tmp_path, "ddp_straight", *ddp, "--trainer.max_steps", "4"), cwd=workdir)
    assert straight.returncode == 0, straight.stderr[-2000:]
    first = dimba(*fit_args(tmp_path, "ddp_first", *ddp, "--trainer.max_steps", "2"), cwd=workdir)
    assert first.returncode == 0, first.stderr[-2000:]
    resumed = dimba(*fit_args(tmp_path, "ddp_resumed", *ddp, "--trainer.max_steps", "4", "--ckpt_path",
                              ckpt_dir(tmp_path, "ddp_first") / "last.ckpt"), cwd=workdir)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = torch.load(ckpt_dir(tmp_path, "ddp_straight") / "last.ckpt", map_location="cpu", weights_only=True)
    b = torch.load(ckpt_dir(tmp_path, "ddp_resumed") / "last.ckpt", map_location="cpu", weights_only=True)
    assert a["global_step"] == b["global_step"] == 4
    for key in ("state_dict", "current_model_state", "optimizer_states", "time_warp"):
        assert_same_tensors(a.get(key), b.get(key), key)
