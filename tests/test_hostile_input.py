"""Inputs a hostile user would try: each works or fails with one clear line, without hanging or damage."""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO, dimba, dimba_in_process, fit_args


def fit_on(workdir, name, source, *extra):
    """Two training steps on `source`, in this process (what is tested is the data path, not the console script)."""
    args = fit_args(workdir, name, "--trainer.max_steps", "2", *extra)
    args[args.index("--data.source") + 1] = source
    return dimba_in_process(*args)


def test_binary_junk_text_trains_with_a_warning(workdir):
    folder = workdir / "junk"
    folder.mkdir()
    (folder / "junk.txt").write_bytes(os.urandom(200_000))
    result = fit_on(workdir, "junk_run", folder)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "not valid UTF-8" in result.stderr


def test_mixed_encodings_train(workdir):
    folder = workdir / "mixed_enc"
    folder.mkdir()
    (folder / "a.txt").write_text("Wherefore art thou, caf\u00e9 na\u00efve? " * 3000, encoding="utf-8")
    (folder / "b.txt").write_bytes(("Thou art caf\u00e9 " * 3000).encode("latin-1"))
    (folder / "c.txt").write_text("\u65e5\u672c\u8a9e " * 3000, encoding="utf-16")
    result = fit_on(workdir, "mixed_run", folder)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.slow
def test_a_single_200mb_line(workdir):
    folder = workdir / "long_line"
    folder.mkdir()
    with open(folder / "line.txt", "w") as fh:
        for _ in range(200):
            fh.write("the king is dead long live the king " * 28_000)  # ~1 MB, no newline
    args = fit_args(workdir, "long_line_run", "--trainer.max_steps", "2", "--data.tokenizer_train_chars", "5000000")
    args[args.index("--data.source") + 1] = folder
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.Popen([sys.executable, "-m", "dimba", *map(str, args)], cwd=workdir, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak memory, not the test process's
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, stderr[-2000:]
    assert usage.ru_maxrss < 4 * 2**20, f"peak RSS {usage.ru_maxrss / 2**20:.1f} GiB"  # ru_maxrss is in KiB


def test_unsupported_file_type_fails_clearly(workdir):
    (workdir / "weights.bin").write_bytes(b"\x00" * 100)
    result = fit_on(workdir, "bin_run", workdir / "weights.bin")
    assert result.returncode == 2 and "unsupported corpus file type '.bin'" in result.stderr


@pytest.mark.slow
def test_ten_thousand_prompts_stream_to_the_output(trained, workdir):
    prompts = workdir / "many_prompts.txt"
    prompts.write_text("".join(f"line {i}\n" for i in range(10_000)))
    out = workdir / "many.jsonl"
    result = dimba("predict", "--ckpt_path", trained, "--prompts", prompts, "--output", out, "--length", 1,
                   "--sampling.steps", 1, "--batch_size", 256, cwd=workdir, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = out.read_text().splitlines()
    assert len(lines) == 10_000 and json.loads(lines[-1])["prompt"] == "line 9999"


