"""Inputs a hostile user would try: each works or fails with one clear line, without hanging or damage."""

import json
import os

import pytest

from tests.conftest import dimba, fit_args


def fit_on(workdir, name, source, *extra):
    args = fit_args(workdir, name, "--trainer.max_steps", "2", *extra)
    args[args.index("--data.source") + 1] = source
    return dimba(*args, cwd=workdir)


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
@pytest.mark.xfail(strict=True, reason="known bug (issue 6): the whole 200 MB document is tokenised at once; the run "
                   "was killed by the kernel after using all 24 GB. Tokenise long documents in chunks, then drop this")
def test_a_single_200mb_line(workdir):
    folder = workdir / "long_line"
    folder.mkdir()
    with open(folder / "line.txt", "w") as fh:
        for _ in range(200):
            fh.write("the king is dead long live the king " * 28_000)  # ~1 MB, no newline
    result = fit_on(workdir, "long_line_run", folder, "--data.tokenizer_train_chars", "5000000")
    assert result.returncode == 0, result.stderr[-2000:]


def test_unsupported_file_type_fails_clearly(workdir):
    (workdir / "weights.bin").write_bytes(b"\x00" * 100)
    result = fit_on(workdir, "bin_run", workdir / "weights.bin")
    assert result.returncode == 2 and "unsupported corpus file type '.bin'" in result.stderr


def test_prompts_blank_spaces_and_control_characters(trained, workdir):
    prompts = workdir / "odd_prompts.txt"
    prompts.write_text("\n   \n\x01\x02\x1b[31m red \x7f\nROMEO:\t\n", encoding="utf-8")
    out = workdir / "odd.jsonl"
    result = dimba("predict", "--ckpt_path", trained, "--prompts", prompts, "--output", out, "--length", 3,
                   "--steps", 1, cwd=workdir)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["", "   ", "\x01\x02\x1b[31m red \x7f", "ROMEO:\t"]


def test_ten_thousand_prompts_stream_to_the_output(trained, workdir):
    prompts = workdir / "many_prompts.txt"
    prompts.write_text("".join(f"line {i}\n" for i in range(10_000)))
    out = workdir / "many.jsonl"
    result = dimba("predict", "--ckpt_path", trained, "--prompts", prompts, "--output", out, "--length", 1,
                   "--steps", 1, "--batch_size", 256, cwd=workdir, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = out.read_text().splitlines()
    assert len(lines) == 10_000 and json.loads(lines[-1])["prompt"] == "line 9999"


def test_an_output_for_other_prompts_is_refused_untouched(trained, workdir):
    out = workdir / "keep.jsonl"
    original = '{"prompt": "mine", "completion": "precious", "steps": 1, "seconds": 0.1}\n'
    out.write_text(original)
    result = dimba("predict", "--ckpt_path", trained, "--prompt", "x", "--output", out, "--length", 2,
                   "--steps", 1, cwd=workdir)
    assert result.returncode == 2 and "holds results for other prompts" in result.stderr
    assert out.read_text() == original
