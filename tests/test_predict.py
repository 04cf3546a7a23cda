"""`dimba predict` on its inputs, in-process (tests/test_cli.py runs the console script itself): prompts files,
resumable JSONL output, and hostile input ending in one `error:` line with exit code 2."""

import json
import os

import pytest

from tests.helpers import assert_clean_failure, dimba_in_process, jsonl


def predict(ckpt, *args):
    return dimba_in_process("predict", "--ckpt_path", ckpt, *args)


def test_predict_writes_jsonl_and_resumes_after_a_torn_line(trained, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The king\n\nThou art\n")
    out = tmp_path / "out" / "samples.jsonl"
    args = ["--prompts", prompts, "--output", out, "--length", "6", "--sampling.steps", "3", "--sampling.sampler",
            "ddpm", "--sampling.top_p", "0.9", "--sampling.guidance", "1.5", "--sampling.seed", "1"]
    first = predict(trained, *args)
    assert first.returncode == 0, first.stderr
    rows = jsonl(out)
    assert [r["prompt"] for r in rows] == ["The king", "", "Thou art"]
    assert all(set(r) == {"prompt", "completion", "steps", "seconds"} and r["steps"] == 3 for r in rows)
    with open(out, "a") as fh:  # an interrupted writer leaves a torn line behind
        fh.write('{"prompt": "torn')
    rows_before = out.read_text().split("\n")[:3]
    again = predict(trained, *args)
    assert again.returncode == 0 and "3 of 3 prompts already done" in again.stderr
    assert out.read_text().split("\n")[:3] == rows_before and out.read_text().endswith("}\n")


def test_resume_keeps_rows_holding_unicode_line_separators(trained, tmp_path):
    """U+2028, U+2029, U+0085, \\f and \\v are ordinary characters of a prompt or completion (JSON leaves them
    unescaped with ensure_ascii=False): a resume after 1 of 3 rows must neither split nor truncate that row."""
    odd = ["a\u2028b\x0bc", "second\u0085 line\x0c", "third\u2029x"]
    prompts = tmp_path / "odd_prompts.txt"
    prompts.write_text("\n".join(odd) + "\n", encoding="utf-8")
    out = tmp_path / "odd.jsonl"
    done = {"prompt": odd[0], "completion": "done\u2028already\u0085", "steps": 2, "seconds": 0.1}
    out.write_text(json.dumps(done, ensure_ascii=False) + "\n", encoding="utf-8")
    result = predict(trained, "--prompts", prompts, "--output", out, "--length", 3, "--sampling.steps", 2)
    assert result.returncode == 0, result.stderr
    assert "1 of 3 prompts already done" in result.stderr
    rows = jsonl(out)
    assert rows[0] == done and [r["prompt"] for r in rows] == odd


def test_prompts_blank_spaces_and_control_characters(trained, tmp_path):
    prompts = tmp_path / "ctrl_prompts.txt"
    prompts.write_text("\n   \n\x01\x02\x1b[31m red \x7f\nROMEO:\t\r\n", encoding="utf-8")
    out = tmp_path / "ctrl.jsonl"
    result = predict(trained, "--prompts", prompts, "--output", out, "--length", 3, "--sampling.steps", 1)
    assert result.returncode == 0, result.stderr[-2000:]
    assert [r["prompt"] for r in jsonl(out)] == ["", "   ", "\x01\x02\x1b[31m red \x7f", "ROMEO:\t"]


def test_results_do_not_depend_on_the_batch_size(trained, tmp_path):
    """Each prompt draws from the stream of (seed, its index): two different prompts never share their noise,
    and batching changes nothing."""
    prompts = tmp_path / "four.txt"
    prompts.write_text("The king\nThe king\nThou art\nThe queen\n")
    outs = []
    for batch in (1, 4):
        out = tmp_path / f"batch{batch}.jsonl"
        assert predict(trained, "--prompts", prompts, "--output", out, "--length", 8, "--sampling.steps", 3,
                       "--batch_size", batch).returncode == 0
        outs.append([r["completion"] for r in jsonl(out)])
    assert outs[0] == outs[1]
    assert outs[0][0] != outs[0][1]  # the same prompt twice: two indices, two streams


def test_an_output_for_other_prompts_is_refused_untouched(trained, tmp_path):
    out = tmp_path / "keep.jsonl"
    original = '{"prompt": "mine", "completion": "precious", "steps": 1, "seconds": 0.1}\n'
    out.write_text(original)
    result = predict(trained, "--prompt", "x", "--output", out, "--length", 2, "--sampling.steps", 1)
    assert_clean_failure(result, "holds results for other prompts")
    assert out.read_text() == original


@pytest.mark.parametrize("args,message", [
    (["--sampling.guidance", "nan"], 'Parser key "sampling.guidance"'),
    (["--sampling.reveal", "backwards"], 'Parser key "sampling.reveal"'),
    (["--length", "many"], 'Parser key "length"'),
    (["--length", "0"], "--length must be >= 1"),
    (["--sampling.eta", "7"], "eta must be in [0, 1]"),
    (["--sampling.steps", "0"], "steps must be >= 1"),
    (["--sampling.top_p", "0"], "top_p must be in (0, 1]"),
    (["--sampling.x0_temperature", "0"], "x0_temperature must be > 0"),
    (["--sampling.temperature", "-1"], "temperature must be >= 0"),
    (["--sampling.clamp_from", "2"], "clamp_from must be in [0, 1]"),
    (["--batch_size", "0"], "--batch_size must be >= 1"),
    (["--prompt", "the king " * 100], "more than the model's context"),
])
def test_bad_sampling_and_length_flags(trained, args, message):
    assert_clean_failure(predict(trained, *args), message)


def test_bad_files_and_outputs(trained, tmp_path):
    assert_clean_failure(predict(tmp_path / "none.ckpt"), "checkpoint not found")
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(trained.read_bytes()[:4096])
    assert_clean_failure(predict(corrupt), "not a readable checkpoint")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert_clean_failure(predict(trained, "--output", blocker / "out.jsonl"), "cannot write to")
    assert_clean_failure(predict(trained, "--prompts", tmp_path), "prompts file not found (or not a file)")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert_clean_failure(predict(trained, "--prompts", empty), "is empty")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_device_as_output_fails_at_once_and_is_left_alone(trained):
    """/dev/full reads as endless zeros: the output must not be read (it hung), nor removed by --overwrite."""
    for extra in ([], ["--overwrite", "true"]):
        result = predict(trained, "--output", "/dev/full", "--length", 2, "--sampling.steps", 1, *extra)
        assert_clean_failure(result, "cannot write to /dev/full")
    assert os.path.exists("/dev/full")


def test_a_model_refuses_sampling_options_it_cannot_honour(trained_ar):
    result = predict(trained_ar, "--prompt", "The king", "--length", 3, "--sampling.guidance", "3")
    assert_clean_failure(result, "the autoregressive baseline cannot honour the sampling setting(s) guidance=3.0")
    ok = predict(trained_ar, "--prompt", "The king", "--length", 3, "--sampling.top_p", "0.9", "--show_steps", "true")
    assert ok.returncode == 0 and ok.stdout.startswith("The king") and "[step 3]" in ok.stderr


def test_show_steps_prints_the_reveal(trained):
    result = predict(trained, "--prompt", "The king", "--length", 4, "--sampling.steps", 3, "--show_steps", "true")
    assert result.returncode == 0 and [f"[step {i}]" in result.stderr for i in (1, 2, 3)] == [True] * 3


def test_a_hybrid_model_predicts_with_either_reveal_order_and_shows_its_reveal(trained_hybrid):
    runs = {reveal: predict(trained_hybrid, "--prompt", "The king", "--length", 6, "--sampling.steps", 3,
                            "--sampling.reveal", reveal, "--show_steps", "true") for reveal in ("random", "confidence")}
    for result in runs.values():
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.startswith("The king") and "[step 3]" in result.stderr


def test_non_utf8_prompts_are_read_with_a_warning(trained, tmp_path):
    prompts = tmp_path / "latin1.txt"
    prompts.write_bytes("caf\xe9 king\n".encode("latin-1"))
    result = predict(trained, "--prompts", prompts, "--length", "4", "--sampling.steps", "2")
    assert result.returncode == 0, result.stderr
    assert "not valid UTF-8" in result.stderr and result.stdout.startswith("caf\ufffd king")


def test_infill_templates_parse_escape_and_refuse_bad_ones():
    from dimba.data.infill import parse_template
    from dimba.errors import DimbaError

    t = parse_template("The king {{8}} the queen.{{ 2 }} a \\{{literal}}")
    assert t.pieces == ["The king ", " the queen.", " a {{literal}}"] and t.gaps == [8, 2]
    ids, given = t.encode(lambda s: [ord(c) for c in s])
    assert len(ids) == len("The king ") + 8 + len(" the queen.") + 2 + len(" a {{literal}}")
    assert given.count(False) == 10
    assert t.fills(ids, given, lambda span: str(len(span))) == ["8", "2"]
    for bad, message in (("no gap here", "no gap"), ("open {{3 forever", "unclosed placeholder"),
                         ("{{x}} gap", "must be a number"), ("{{0}}", "at least 1 token")):
        with pytest.raises(DimbaError, match=message):
            parse_template(bad)


def test_predict_infill_fills_every_gap_and_keeps_the_template(trained, trained_ar, tmp_path):
    templates = tmp_path / "templates.txt"
    templates.write_text("The king {{3}} the queen.\n{{2}} lord {{4}}\n")
    for ckpt, steps in ((trained, ["--sampling.steps", 3]), (trained_ar, [])):
        out = tmp_path / f"infill_{ckpt.parents[2].name}.jsonl"
        result = predict(ckpt, "--prompts", templates, "--infill", "true", "--output", out, *steps)
        assert result.returncode == 0, result.stderr[-2000:]
        rows = jsonl(out)
        assert [r["prompt"] for r in rows] == ["The king {{3}} the queen.", "{{2}} lord {{4}}"]
        assert [len(r["fills"]) for r in rows] == [2 - 1, 2]
        assert rows[0]["text"].startswith("The king ") and rows[0]["text"].endswith(" the queen.")
        assert rows[0]["text"] == "The king " + rows[0]["fills"][0] + " the queen."
    printed = predict(trained, "--prompt", "The king {{3}} the queen.", "--infill", "true", "--sampling.steps", 2)
    assert printed.returncode == 0 and printed.stdout.startswith("The king ")


@pytest.mark.parametrize("template,message", [("no gap", "prompt 1: the template has no gap"),
                                              ("a {{5 b", "prompt 1: unclosed placeholder"),
                                              ("a {{500}} b", "more than the model generates")])
def test_bad_infill_templates_end_in_one_line(trained, template, message):
    assert_clean_failure(predict(trained, "--prompt", template, "--infill", "true"), message)


def test_length_does_not_go_with_infill(trained):
    assert_clean_failure(predict(trained, "--prompt", "a {{2}}", "--infill", "true", "--length", 3), "does not apply")
