"""The masked-diffusion baseline (MDLM): its ELBO weighting, reveal schedule and order, the sampler's cache, a
learning test, and the product as a user runs it."""

import math
import warnings

import pytest
import torch

import dimba as dimba_api
from dimba.diffusion.masking import choose_reveals, hidden_after, hide, stratified_times
from dimba.sampling import ExampleStreams, SamplingConfig
from dimba.training.masked_lm import MaskedLM
from tests.helpers import CONFIGS, LEARNING_NET, TINY_NET, ckpt_dir, dimba, fit_args, overfit, sentence_ids


def tiny_masked(**configs):
    return MaskedLM(net=TINY_NET, vocab_size=30, seq_len=12, **configs)


def test_the_loss_is_the_elbo_weighted_cross_entropy_of_the_hidden_tokens():
    model = tiny_masked()
    tokens = torch.randint(0, 30, (2, 12))
    prompt = torch.zeros(2, 12, dtype=torch.bool)
    prompt[:, :4] = True
    t = torch.tensor([0.25, 0.8])
    uniforms = torch.rand(2, 12)
    out = model.masked_loss(tokens, t, prompt, uniforms)
    hidden = ~prompt & (uniforms < t[:, None])
    logits = model.net(tokens.masked_fill(hidden, model.net.mask_id))
    ce = -torch.log_softmax(logits, -1).gather(-1, tokens[..., None])[..., 0]
    expected = torch.stack([(ce[b] * hidden[b]).sum() / t[b] / 8 for b in range(2)]).mean()  # 8 generated each
    torch.testing.assert_close(out.total, expected)
    assert not (hidden & prompt).any()


def test_training_times_and_hiding_follow_the_schedule():
    t = stratified_times(1000)
    assert t.min() >= 1e-3 and t.max() <= 1 and abs(t.mean().item() - 0.5) < 0.01
    generated = torch.ones(4000, 50, dtype=torch.bool)
    share = hide(generated, torch.full((4000,), 0.3)).float().mean().item()
    assert abs(share - 0.3) < 0.01


def test_reveal_counts_and_order():
    assert [int(hidden_after(torch.tensor(10), s)) for s in (1.0, 0.75, 0.5, 0.0)] == [10, 8, 5, 0]
    hidden = torch.tensor([[True, True, False, True, True]])
    confidence = torch.tensor([[0.1, 0.9, 0.99, 0.5, 0.2]])
    chosen = choose_reveals(hidden, torch.tensor([2]), confidence, ExampleStreams(0, [0]))
    assert chosen.tolist() == [[False, True, False, True, False]]  # the two most confident hidden ones
    random_pick = choose_reveals(hidden, torch.tensor([3]), None, ExampleStreams(0, [0]))
    assert random_pick.sum() == 3 and not (random_pick & ~hidden).any()


def test_the_sampler_calls_the_network_only_when_a_token_changed():
    """64 steps for 8 tokens: 8 steps reveal something, the rest would see the same input (the cache)."""
    model = tiny_masked().eval()
    calls = []
    forward = model.net.forward
    model.generation_call = lambda: (lambda x: calls.append(1) or forward(x))
    seen = []
    out = model.generate([[1, 2]], 8, SamplingConfig(steps=64, seed=0), on_step=lambda i, g: seen.append(g.clone()))
    assert len(calls) == 8 and len(seen) == 64
    assert all((g == -1).sum() >= (later == -1).sum() for g, later in zip(seen, seen[1:], strict=False))
    assert (seen[-1] >= 0).all() and seen[-1].tolist() == out


def test_unsupported_sampling_settings_are_refused():
    model = tiny_masked()
    for bad in (dict(guidance=2.0), dict(x0_temperature=0.5), dict(sampler="ddpm")):
        with pytest.raises(ValueError, match="cannot honour"):
            model.generate([[1]], 3, SamplingConfig(**bad))


# Confidence-first order is checked by tests/test_sampler_steps.py; its learning run with -m slow.
@pytest.mark.parametrize("reveal", ["random", pytest.param("confidence", marks=pytest.mark.slow)])
def test_a_small_model_overfits_sentences_and_completes_them(reveal):
    """Learning test: prompted with the first two words, the model writes the other eight exactly."""
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    vocab, ids = sentence_ids()
    model, loss = overfit(MaskedLM(net=LEARNING_NET, prompt=dict(prompt_prob=0.9), vocab_size=vocab, seq_len=10),
                          ids, 300)
    assert math.isfinite(loss)
    out = model.generate([s[:2].tolist() for s in ids], 8, SamplingConfig(steps=8, temperature=0, reveal=reveal))
    assert out == ids[:, 2:].tolist()


def test_fit_and_predict_through_the_cli(workdir):
    result = dimba(*fit_args(workdir, "masked", config=("base.yaml", "masked.yaml"), model=None), cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = ckpt_dir(workdir, "masked", "masked") / "last.ckpt"
    hp = torch.load(ckpt, weights_only=True)["hyper_parameters"]
    assert hp["_class_path"] == "dimba.training.masked_lm.MaskedLM" and hp["net"]["d_model"] == 32
    out = dimba("predict", "--ckpt_path", ckpt, "--prompt", "The king", "--length", 6, "--sampling.steps", 3,
                "--sampling.reveal", "confidence", "--show_steps", "true", cwd=workdir)
    assert out.returncode == 0 and out.stdout.startswith("The king") and "[step 3]" in out.stderr, out.stderr
    assert (CONFIGS / "model" / "masked.yaml").exists()
    folder = workdir / "masked_export"
    assert dimba("export", "--ckpt_path", ckpt, "--out_dir", folder, cwd=workdir).returncode == 0
    for path in (ckpt, folder):
        model = dimba_api.load(path, device="cpu")
        texts = model.complete(["The king", "Thou"], length=5, seed=2, steps=4)
        assert len(texts) == 2 and texts == model.complete(["The king", "Thou"], length=5, seed=2, steps=4,
                                                           batch_size=1)
