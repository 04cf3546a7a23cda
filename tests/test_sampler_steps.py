"""The steps every sampler shares, checked through every sampler that uses them: guidance (`Guidance`: Gaussian
and hybrid loops), the commit step (`CommitStep`: masked and hybrid), and self-conditioning while sampling.
Each test fails on a mutant that drops the behaviour in one sampler: guidance removed from the logits, a
confidence-first reveal that behaves as random, self-conditioning dropped."""

import pytest
import torch

from dimba.diffusion.generate import reverse_diffusion
from dimba.diffusion.guidance import Guidance
from dimba.diffusion.hybrid import hybrid_reverse_diffusion
from dimba.diffusion.masking import CommitStep
from dimba.diffusion.samplers import DDIMSampler
from dimba.diffusion.schedules import NoiseSchedule
from dimba.sampling import ExampleStreams, SamplingConfig
from tests.helpers import TINY_NET

V, L = 4, 6
TABLE = torch.eye(V) * 2


def run_loop(kind: str, denoise, cfg: SamplingConfig, given=None, tokens=None, on_step=None):
    """One of the two loops over embeddings, with nothing given (or `given`), as the models call them."""
    tokens = torch.zeros(1, L, dtype=torch.long) if tokens is None else tokens
    given = torch.zeros(1, L, dtype=torch.bool) if given is None else given
    guidance = Guidance(cfg.guidance, cfg.x0_temperature, TABLE)
    if kind == "gaussian":
        return reverse_diffusion(denoise, DDIMSampler(NoiseSchedule()), guidance, cfg, ExampleStreams(0, [0]),
                                 tokens, given, on_step=on_step)
    return hybrid_reverse_diffusion(denoise, DDIMSampler(NoiseSchedule("rank", d_embed=V)), guidance,
                                    CommitStep(cfg.reveal, cfg.temperature, cfg.top_p), cfg.steps, cfg.self_condition,
                                    ExampleStreams(0, [0]), tokens, given, on_step)


@pytest.mark.parametrize("kind", ["gaussian", "hybrid"])
def test_the_tokens_follow_the_guided_logits(kind):
    """Conditional logits prefer token 1, unconditional ones token 0 more weakly: at scale 3 the guided logits
    l_u + 3 (l_c - l_u) prefer token 1 by far; at scale 0 token 0. The x0 estimates agree with neither, so only
    logits that went through guidance give these tokens."""
    cond = torch.tensor([0.0, 1.0, -5.0, -5.0]).expand(1, L, V)
    uncond = torch.tensor([0.5, 0.0, -5.0, -5.0]).expand(1, L, V)

    def denoise(x, t, tokens, clean, self_cond, drop):
        return (uncond if drop is not None else cond), TABLE[3].expand(1, L, V)

    for scale, expected in ((3.0, 1), (0.0, 0)):
        out = run_loop(kind, denoise, SamplingConfig(steps=4, guidance=scale, temperature=0))
        assert out.tolist() == [[expected] * L], (kind, scale)


@pytest.mark.parametrize("kind", ["gaussian", "hybrid"])
def test_the_latents_step_towards_the_guided_x0(kind):
    """At scale 2 what the loop feeds back (self-conditioning) at hidden positions is x0_u + 2 (x0_c - x0_u)."""
    x0_c, x0_u = TABLE[1].expand(1, L, V), TABLE[0].expand(1, L, V)
    fed = []

    def denoise(x, t, tokens, clean, self_cond, drop):
        if drop is None:
            fed.append((self_cond, clean.clone()))
        logits = torch.zeros(1, L, V)
        return logits, (x0_u if drop is not None else x0_c)

    run_loop(kind, denoise, SamplingConfig(steps=3, guidance=2.0, temperature=0))
    self_cond, clean = fed[1]
    hidden = ~clean[0]
    assert hidden.any()
    torch.testing.assert_close(self_cond[0][hidden], (x0_u + 2 * (x0_c - x0_u))[0][hidden])


@pytest.mark.parametrize("kind", ["gaussian", "hybrid"])
def test_self_conditioning_feeds_the_estimate_back_or_nothing(kind):
    """With self_condition, every call after the first gets the previous step's estimate (hybrid: the embeddings
    of the tokens revealed so far where revealed); without it, nothing."""
    x0 = (TABLE[0] * 0.7 + TABLE[2] * 0.3).expand(1, L, V)
    logits = torch.tensor([2.0, 0.0, 1.0, -5.0]).expand(1, L, V)
    for on in (True, False):
        calls = []

        def denoise(x, t, tokens, clean, self_cond, drop, calls=calls):
            calls.append((self_cond, tokens.clone(), clean.clone()))
            return logits, x0

        run_loop(kind, denoise, SamplingConfig(steps=4, temperature=0, self_condition=on))
        assert calls[0][0] is None
        for (self_cond, tokens, clean) in calls[1:]:
            if not on:
                assert self_cond is None
                continue
            expected = torch.where(clean[..., None], TABLE[tokens], x0)
            torch.testing.assert_close(self_cond, expected)


def confident_logits(order: list[int]) -> torch.Tensor:
    """(1, L, V) logits whose confidence (top probability) falls along `order` (first = most confident); the
    argmax is token 1 everywhere."""
    logits = torch.zeros(1, L, V)
    for rank, pos in enumerate(order):
        logits[0, pos, 1] = 10.0 - rank
    return logits


ORDER = [4, 1, 5, 0, 3, 2]


def reveal_order(seen: list[torch.Tensor]) -> list[int]:
    """The positions in the order they were revealed (by step; within a step, by position)."""
    order, done = [], set()
    for guess in seen:
        now = [p for p in range(L) if int(guess[0, p]) >= 0 and p not in done]
        order += now
        done |= set(now)
    return order


def test_the_commit_step_reveals_the_count_most_confident_or_random_positions():
    logits = confident_logits(ORDER)
    hidden = torch.ones(1, L, dtype=torch.bool)
    tokens = torch.zeros(1, L, dtype=torch.long)
    step = CommitStep("confidence", 0.0, 1.0)
    count = step.count(hidden, hidden.sum(1), 0.5)  # half of 6 stay hidden at s = 0.5
    new, still = step.step(tokens, hidden, count, logits, ExampleStreams(0, [0]))
    assert int(count) == 3 and sorted(torch.nonzero(~still[0]).flatten().tolist()) == sorted(ORDER[:3])
    assert new[0, ORDER[:3]].tolist() == [1, 1, 1] and new[0, ORDER[3:]].tolist() == [0, 0, 0]
    randoms = {tuple(torch.nonzero(~CommitStep("random", 0.0, 1.0).step(
        tokens, hidden, count, logits, ExampleStreams(seed, [0]))[1][0]).flatten().tolist()) for seed in range(8)}
    assert len(randoms) > 1  # random reveals do not follow the confidence


def masked_model_with(logits: torch.Tensor):
    from dimba.training.masked_lm import MaskedLM

    model = MaskedLM(net=TINY_NET, vocab_size=V, seq_len=L).eval()
    model.generation_fn = lambda: (lambda x: logits)
    return model


@pytest.mark.parametrize("kind", ["hybrid", "masked"])
def test_confidence_first_reveals_the_most_confident_positions_first(kind):
    """Steps of one reveal each: the reveal order is the confidence order, and random order is not."""
    logits = confident_logits(ORDER)
    orders = {}
    for reveal in ("confidence", "random"):
        cfg = SamplingConfig(steps=L, temperature=0, reveal=reveal)
        seen = []
        record = lambda i, guess, seen=seen: seen.append(guess.clone())
        if kind == "hybrid":
            run_loop("hybrid", lambda *a: (logits, TABLE[1].expand(1, L, V)), cfg, on_step=record)
        else:
            nothing = torch.zeros(1, L, dtype=torch.bool)
            masked_model_with(logits).fill_group(torch.zeros(1, L, dtype=torch.long), nothing, cfg,
                                                 ExampleStreams(0, [0]), record)
        orders[reveal] = reveal_order(seen)
    assert orders["confidence"] == ORDER
    assert orders["random"] != ORDER and sorted(orders["random"]) == list(range(L))
