"""Hybrid discrete-continuous corruption (CANDI-style) for DIMBA and the skip-logits output prior: corruption,
loss, the rank schedule, the committing sampler, and a learning test."""

import math
import warnings

import pytest
import torch

from dimba.diffusion.config import HybridConfig
from dimba.diffusion.guidance import Guidance
from dimba.diffusion.hybrid import hybrid_reverse_diffusion, likelihood_logits
from dimba.diffusion.masking import CommitStep
from dimba.diffusion.samplers import DDIMSampler
from dimba.diffusion.schedules import NoiseSchedule
from dimba.errors import DimbaError
from dimba.sampling import ExampleStreams, SamplingConfig
from dimba.training.checkpoint import upgrade_hparams
from dimba.training.hybrid_lm import HybridLM
from tests.helpers import LEARNING_NET, TINY_NET, overfit, sentence_ids


def tiny_hybrid(**configs):
    return HybridLM(net=TINY_NET, denoiser={"d_embed": 8, **configs.pop("denoiser", {})}, vocab_size=40, seq_len=16,
                    **configs)


def test_skip_logits_are_the_exact_gaussian_posterior():
    """With a flat prior, softmax(likelihood_logits) is Bayes' rule with Gaussian densities (float64), whatever
    the embeddings' norms."""
    torch.manual_seed(0)
    table = torch.randn(7, 5, dtype=torch.float64) * torch.linspace(0.5, 2, 7, dtype=torch.float64)[:, None]
    abar = torch.tensor([0.3, 0.9], dtype=torch.float64)
    x = torch.randn(2, 3, 5, dtype=torch.float64)
    got = torch.softmax(likelihood_logits(x, table, abar).double(), -1)
    a, s2 = abar.sqrt()[:, None, None, None], (1 - abar)[:, None, None, None]
    log_density = -((x[:, :, None, :] - a * table) ** 2).sum(-1) / (2 * s2[..., 0])
    torch.testing.assert_close(got, torch.softmax(log_density, -1), rtol=1e-5, atol=1e-6)


def test_the_rank_schedule_puts_the_true_token_at_the_target_rank():
    """Equal-norm random embeddings (d 64, 4096 tokens): the true token's measured rank share is t/2."""
    torch.manual_seed(0)
    d, V = 64, 4096
    table = torch.nn.functional.normalize(torch.randn(V, d), dim=-1) * math.sqrt(d)
    schedule = NoiseSchedule("rank", d_embed=d)
    for t in (0.1, 0.5, 0.9):
        abar = schedule.alpha_bar(torch.tensor(t))
        idx = torch.randint(0, V, (500,))
        x = abar.sqrt() * table[idx] + (1 - abar).sqrt() * torch.randn(500, d)
        dist = torch.cdist(x, table)
        rank = (dist < dist.gather(1, idx[:, None])).float().mean()
        assert abs(rank.item() - t / 2) < 0.02, (t, rank)
    assert schedule.alpha_bar(torch.tensor(1.0)) < 1e-6 and schedule.alpha_bar(torch.tensor(0.0)) > 0.999


def test_hybrid_corruption_keeps_a_one_minus_t_share_clean_and_weighs_the_loss_by_one_over_t():
    model = tiny_hybrid()
    tokens = torch.randint(0, 40, (2, 16))
    prompt = torch.zeros(2, 16, dtype=torch.bool)
    prompt[:, :4] = True
    t = torch.tensor([0.25, 0.75])
    uniforms = torch.rand(2, 16)
    seen = {}
    forward = model.net.forward

    def spy(*args):
        seen["clean"] = args[6]
        seen["logits"], seen["x0_hat"] = forward(*args)
        return seen["logits"], seen["x0_hat"]

    model.net.forward = spy
    out = model.denoising_loss(tokens, t, prompt, None, self_cond_prob=0.0, uniforms=uniforms)
    corrupted = ~prompt & (uniforms < t[:, None])
    assert torch.equal(seen["clean"], ~corrupted)
    ce = torch.nn.functional.cross_entropy(seen["logits"].transpose(1, 2), tokens, reduction="none")
    elbo = torch.stack([(ce[b] * corrupted[b]).sum() / t[b] / 12 for b in range(2)]).mean()  # 12 generated each
    mse = ((seen["x0_hat"] - model.net.embed(tokens)).pow(2).mean(-1) * corrupted).sum() / corrupted.sum()
    torch.testing.assert_close(out.total, elbo + mse)  # ce_weight = mse_weight = 1


def _oracle(target, calls):
    table = torch.eye(4) * 2

    def denoise(x, t, tokens, clean, self_cond, drop):
        calls.append({"clean": clean.clone(), "tokens": tokens.clone(), "drop": drop is not None})
        logits = torch.stack([-(table[target] - v).pow(2).sum(-1) for v in table], dim=-1) * 5
        return logits, table[target]
    return denoise, table


@pytest.mark.parametrize("reveal", ["random", "confidence"])
def test_the_hybrid_sampler_reveals_on_schedule_and_ends_on_the_oracle(reveal):
    target = torch.tensor([[2, 0, 1, 3, 3, 0, 1, 2]])
    calls, seen = [], []
    denoise, table = _oracle(target, calls)
    tokens = hybrid_reverse_diffusion(denoise, DDIMSampler(NoiseSchedule("rank", d_embed=4)), Guidance(1.0, 1.0, table),
                                      CommitStep(reveal, 0.0, 1.0), 4, True, ExampleStreams(0, [0]),
                                      torch.zeros(1, 8, dtype=torch.long), torch.zeros(1, 8, dtype=torch.bool),
                                      on_step=lambda i, g: seen.append(g))
    revealed = [2, 4, 6, 8]  # a (t - s)/t share of the hidden ones per step
    assert tokens.tolist() == target.tolist()
    assert [int((g >= 0).sum()) for g in seen] == revealed
    assert [int(c["clean"].sum()) for c in calls] == [0] + revealed[:-1]  # what was revealed is given clean
    assert all(torch.equal(c["tokens"][c["clean"]], target[c["clean"]]) for c in calls)


def test_hidden_latents_step_towards_the_x0_estimate():
    table = torch.eye(4) * 2
    target = torch.tensor([[2, 0, 1, 3]])
    seen_x = []

    def denoise(x, t, tokens, clean, self_cond, drop):
        seen_x.append(x.clone())
        logits = torch.nn.functional.one_hot(target, 4).float() * 50  # sure of the target...
        return logits, torch.full((1, 4, 4), 0.5)  # ...with an x0 estimate that is a blend, not an embedding

    sampler = DDIMSampler(NoiseSchedule("rank", d_embed=4))
    hybrid_reverse_diffusion(denoise, sampler, Guidance(1.0, 1.0, table), CommitStep("random", 0.0, 1.0), 4, False,
                             ExampleStreams(0, [0]), torch.zeros(1, 4, dtype=torch.long),
                             torch.zeros(1, 4, dtype=torch.bool))
    times = sampler.timesteps(4)
    expected = sampler.step(seen_x[0], torch.full((1, 4, 4), 0.5), float(times[0]), float(times[1]))
    still_hidden = (seen_x[1] != table[target]).any(-1)  # the 3 of 4 not revealed by the first step
    assert int(still_hidden.sum()) == 3
    torch.testing.assert_close(seen_x[1][still_hidden], expected[still_hidden])


# The default model's head by default; the other two heads with -m slow (the suite's time budget).
@pytest.mark.parametrize("head", [pytest.param(dict(head="tied"), marks=pytest.mark.slow),
                                  pytest.param(dict(head="untied"), marks=pytest.mark.slow),
                                  dict(head="untied", wide_input=True)],
                         ids=["tied", "untied", "untied_wide_input"])
def test_a_small_hybrid_model_overfits_sentences_and_completes_them(head):
    """Learning test: prompted with the first two words, the hybrid model writes the other eight exactly."""
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    vocab, ids = sentence_ids()
    model, _ = overfit(HybridLM(net=LEARNING_NET, denoiser=dict(d_embed=16, **head),
                                diffusion={"schedule": "rank", "skip_logits": True},
                               prompt=dict(prompt_prob=0.9, cfg_dropout=0.0), vocab_size=vocab, seq_len=10), ids, 400)
    out = model.generate([s[:2].tolist() for s in ids], 8,
                         SamplingConfig(steps=8, temperature=0, reveal="confidence", seed=3))
    assert out == ids[:, 2:].tolist()


def test_above_the_switch_time_corrupted_tokens_are_absorbed_and_below_it_they_keep_their_latents():
    """hybrid.absorb_above t_s: for t > t_s the network reads no latent at a corrupted position (its output does not
    move when the latents do), for t <= t_s it does; the skip logits are off where there is no latent."""
    model = tiny_hybrid(hybrid={"absorb_above": 0.5}, diffusion={"schedule": "rank", "skip_logits": True})
    for block in model.net.blocks:
        torch.nn.init.normal_(block.modulation.weight, std=0.1)
    tokens = torch.randint(0, 40, (2, 16))
    prompt = torch.zeros(2, 16, dtype=torch.bool)
    seen = []
    forward = model.net.forward
    model.net.forward = lambda *args: seen.append(args) or forward(*args)
    for t in (0.8, 0.3):
        seen.clear()
        model.denoising_loss(tokens, torch.full((2,), t), prompt, None, 0.0, uniforms=torch.zeros(2, 16))
        x_t, _, _, _, self_cond, drop, clean, bias, absorbed = seen[-1]
        if t > 0.5:
            assert absorbed.all() and (bias == 0).all()
        else:
            assert absorbed is None or not absorbed.any()
        moved = forward(x_t + 1.0, *seen[-1][1:])[0]
        assert torch.equal(moved, forward(*seen[-1])[0]) == (t > 0.5)
    with pytest.raises(ValueError, match="absorb_above"):
        tiny_hybrid(hybrid={"absorb_above": 0.0})


def test_plain_weighting_has_no_elbo_factor():
    plain = tiny_hybrid(hybrid={"weighting": "plain"})
    tokens = torch.randint(0, 40, (4, 16))
    out = plain.denoising_loss(tokens, torch.full((4,), 0.2), torch.zeros(4, 16, dtype=torch.bool), None, 0.0,
                               uniforms=torch.zeros(4, 16))
    torch.testing.assert_close(out.total, out.metrics["ce"] + out.metrics["mse"])  # no 1/t


def test_checkpoints_naming_the_removed_high_t_load_only_at_its_default():
    """hybrid.high_t (training times leaning towards high t) left the code, measured no better: checkpoints
    written with it at 1 (uniform times, what the code does now) load; any other value is refused by name."""
    hp = {"_class_path": "dimba.training.hybrid_lm.HybridLM", "vocab_size": 40, "seq_len": 16,
          "hybrid": {"weighting": "plain", "high_t": 1.0}}
    assert upgrade_hparams(hp)["hybrid"] == {**HybridConfig().to_dict(), "weighting": "plain"}
    with pytest.raises(DimbaError, match="sets hybrid.high_t: 2.0, a setting removed in version 0.3"):
        upgrade_hparams({**hp, "hybrid": {"high_t": 2.0}})


def test_the_default_config_trains_on_plain_cross_entropy_and_old_checkpoints_keep_the_elbo():
    """configs/model/hybrid.yaml sets the measured winner; a checkpoint that names no weighting (written before the
    option) resumes with the ELBO weight it was trained on."""
    from dimba.cli.fit import model_from_configs
    from tests.helpers import CONFIGS
    assert model_from_configs("--config", CONFIGS / "base.yaml").hybrid_config.weighting == "plain"
    assert tiny_hybrid(hybrid={}).hybrid_config.weighting == "elbo"  # a checkpoint's missing setting: the default


def test_the_committing_sampler_goes_through_both_regimes():
    """One sampler: steps above t_s read hidden tokens as absorbed, steps below read their latents."""
    model = tiny_hybrid(hybrid={"absorb_above": 0.6}).eval()
    calls = []
    forward = model.net.forward
    model.net.forward = lambda *args: calls.append((float(args[1][0]), args[8])) or forward(*args)
    out = model.generate([[1, 2]], 10, SamplingConfig(steps=4, seed=0))
    assert len(out[0]) == 10
    assert [t for t, _ in calls] == [1.0, 0.75, 0.5, 0.25]
    assert [bool(a.any()) if a is not None else False for _, a in calls] == [True, True, False, False]
