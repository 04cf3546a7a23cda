"""Self-distillation through time (`dimba distill`): the teacher's two-step target, the student's checkpoint of the
teacher's own kind, and refusal of models without a committing sampler."""

import pytest
import torch

import dimba
from dimba.errors import DimbaError
from tests.helpers import CONFIGS, assert_clean_failure, ckpt_dir, dimba_in_process, fit_args


def test_the_teachers_two_steps_make_a_distribution_one_hot_where_its_first_step_revealed():
    from dimba.training.masked_lm import MaskedLM
    from tests.helpers import TINY_NET

    torch.manual_seed(0)
    teacher = MaskedLM(net=TINY_NET, vocab_size=30, seq_len=16).eval()
    tokens = torch.randint(0, 30, (4, 16))
    prompt = torch.zeros(4, 16, dtype=torch.bool)
    prompt[:, :3] = True
    x = tokens.masked_fill(~prompt, teacher.net.mask_id)
    hidden = ~prompt
    target, reveal = teacher._two_steps(x, hidden, hidden.sum(1), t=1.0, dt=0.25)
    torch.testing.assert_close(target.sum(-1), torch.ones(4, 16))
    assert torch.equal(reveal.sum(1), torch.full((4,), 13 - round(13 * 0.75)))  # the schedule's share at t - dt
    assert (target[reveal].max(-1).values == 1).all() and (target[hidden & ~reveal].max(-1).values < 1).all()
    student_logits, target, hidden = teacher.self_distillation_pair(teacher, tokens, prompt, 0.5, 0.25)
    assert student_logits.shape == target.shape == (4, 16, 30) and not hidden[prompt].any()


def test_distill_writes_a_student_of_the_teachers_kind(trained_hybrid_whole, workdir, tmp_path):
    args = ["distill", "--config", CONFIGS / "base.yaml", "--config", CONFIGS / "tiny.yaml", "--data.source",
            workdir / "corpus", "--model.init_args.teacher", trained_hybrid_whole,
            "--model.init_args.teacher_steps", 8,
            "--trainer.max_steps", 3, "--trainer.default_root_dir", tmp_path, "--trainer.logger.init_args.save_dir",
            tmp_path, "--trainer.logger.init_args.name", "student"]
    result = dimba_in_process(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    path = ckpt_dir(tmp_path, "", "student") / "last.ckpt"
    ckpt = torch.load(path, weights_only=True)
    teacher = torch.load(trained_hybrid_whole, weights_only=True)
    assert ckpt["hyper_parameters"] == teacher["hyper_parameters"] and ckpt["distillation"]["student_steps"] == 4
    assert set(ckpt["state_dict"]) == set(teacher["state_dict"])  # the student only, no teacher weights
    assert any(not torch.equal(ckpt["state_dict"][k], teacher["state_dict"][k]) for k in ckpt["state_dict"])
    student = dimba.load(path, device="cpu")
    assert type(student).__name__ == "HybridLM" and student.complete("The king", length=4, steps=4)
    again = dimba_in_process(*[str(a).replace(str(trained_hybrid_whole), str(path)) for a in args[:-1]], "student2")
    assert again.returncode == 0, again.stderr[-3000:]  # a student is a teacher for the next round


def test_distill_refuses_a_model_without_a_committing_sampler_or_with_blocks(trained, trained_ar, trained_hybrid,
                                                                            workdir, tmp_path):
    refusals = {trained: "has no committing sampler to distil", trained_ar: "has no committing sampler to distil",
                trained_hybrid: "distilling a block model is not supported"}  # the default DIMBA has blocks
    for teacher, message in refusals.items():
        args = fit_args(tmp_path, "refused", "--data.source", workdir / "corpus", "--model.init_args.teacher", teacher,
                        model=None)
        args[0] = "distill"
        assert_clean_failure(dimba_in_process(*args), message)
    from dimba.training.distill import Distiller
    with pytest.raises(DimbaError, match="even"):
        Distiller(str(trained), teacher_steps=7)
