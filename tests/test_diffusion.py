"""Schedules, samplers, the time warp and token sampling against closed forms and oracles."""

import math

import pytest
import torch

from dimba.diffusion.generate import reverse_diffusion
from dimba.diffusion.guidance import Guidance
from dimba.diffusion.losses import diffusion_loss
from dimba.diffusion.samplers import DDIMSampler
from dimba.diffusion.schedules import NoiseSchedule
from dimba.diffusion.time_warp import TimeWarp
from dimba.sampling import ExampleStreams, SamplingConfig, sample_tokens


def test_cosine_schedule_is_the_papers_formula():
    sched = NoiseSchedule("cosine")
    for t in (0.0, 0.1, 0.37, 0.5, 0.9):
        expected = math.cos(((t + 0.008) / 1.008) * math.pi / 2) ** 2
        assert sched.alpha_bar(torch.tensor(t, dtype=torch.float64)).item() == pytest.approx(expected, rel=1e-12)
    T = 50
    betas = sched.betas(T)
    abar = [math.cos(((k / T + 0.008) / 1.008) * math.pi / 2) ** 2 for k in range(T + 1)]
    for k in (1, 10, 25, 49):
        assert betas[k - 1].item() == pytest.approx(1 - abar[k] / abar[k - 1], rel=1e-9)


@pytest.mark.parametrize("name", ["cosine", "sqrt", "linear"])
def test_schedules_decrease_from_one_to_zero(name):
    abar = NoiseSchedule(name).alpha_bar(torch.linspace(0, 1, 101, dtype=torch.float64))
    assert abar[0] > 0.98 and abar[-1] < 0.01
    assert (abar[1:] <= abar[:-1]).all()


def test_log_snr_shift_is_noise_scaling():
    base, shifted = NoiseSchedule("cosine"), NoiseSchedule("cosine", log_snr_shift=-2 * math.log(4))
    t = torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64)
    # x_t = sqrt(abar) x0 + sqrt(1-abar) eps with x0 scaled by 1/4 has SNR / 16.
    snr = base.alpha_bar(t) / (1 - base.alpha_bar(t)) / 16
    torch.testing.assert_close(shifted.alpha_bar(t), snr / (1 + snr))


def test_q_sample_moments():
    sched = NoiseSchedule("cosine")
    x0 = torch.randn(1, 1, 8).expand(20000, 1, 8)
    t = torch.full((20000,), 0.6)
    xt = sched.q_sample(x0, t, torch.randn_like(x0))
    abar = sched.alpha_bar(torch.tensor(0.6)).item()
    torch.testing.assert_close(xt.mean(0), math.sqrt(abar) * x0[0], atol=0.03, rtol=0)
    torch.testing.assert_close(xt.var(0), torch.full_like(x0[0], 1 - abar), atol=0.03, rtol=0)


def test_ddim_eta_one_is_the_ddpm_posterior():
    sched = NoiseSchedule("cosine")
    sampler = DDIMSampler.named("ddpm", sched)
    x_t, x0 = torch.randn(2, 5, 4, dtype=torch.float64), torch.randn(2, 5, 4, dtype=torch.float64)
    t, t_prev = 0.7, 0.6
    z = torch.randn(x_t.shape, dtype=torch.float64)
    got = sampler.step(x_t, x0, t, t_prev, z)
    abar_t = sched.alpha_bar(torch.tensor(t, dtype=torch.float64))
    abar_p = sched.alpha_bar(torch.tensor(t_prev, dtype=torch.float64))
    alpha = abar_t / abar_p
    beta = 1 - alpha
    # Ho et al. 2020, eqs. 6-7
    mean = abar_p.sqrt() * beta / (1 - abar_t) * x0 + alpha.sqrt() * (1 - abar_p) / (1 - abar_t) * x_t
    var = (1 - abar_p) / (1 - abar_t) * beta
    torch.testing.assert_close(got.double(), mean + var.sqrt() * z, atol=1e-5, rtol=1e-5)


def test_ddim_with_the_true_x0_walks_the_forward_marginals():
    """At eta 0, from x_1 = q_sample(x0, 1, eps) and given the true x0, every DDIM step lands exactly on
    q_sample(x0, t_i, eps): eps_hat recovers eps, and the update re-noises x0 with it to the earlier level."""
    sched = NoiseSchedule("cosine")
    sampler = DDIMSampler(sched, eta=0.0)
    x0 = torch.randn(3, 7, 4, dtype=torch.float64)
    eps = torch.randn(3, 7, 4, dtype=torch.float64)
    times = sampler.timesteps(10)
    at = lambda t: sched.q_sample(x0, torch.full((3,), float(t), dtype=torch.float64), eps)
    x = at(times[0])
    for i in range(10):
        x = sampler.step(x, x0, float(times[i]), float(times[i + 1]))
        expected = x0 if times[i + 1] == 0 else at(times[i + 1])
        torch.testing.assert_close(x, expected, rtol=1e-9, atol=1e-9)


def test_timesteps_cover_one_to_zero_and_follow_the_warp():
    sampler = DDIMSampler(NoiseSchedule())
    ts = sampler.timesteps(8)
    assert ts[0] == 1 and ts[-1] == 0 and len(ts) == 9 and (ts[1:] < ts[:-1]).all()
    warp = TimeWarp(num_bins=20, window=2000, uniform_mix=0.0)
    t = torch.linspace(0.001, 0.999, 2000)
    warp.update(t, torch.sigmoid((t - 0.8) * 40) * 6)  # CE rises sharply around t = 0.8
    warped = sampler.timesteps(8, warp)
    assert warped[0] == pytest.approx(1.0) and warped[-1] == pytest.approx(0.0)
    inner = warped[1:-1]
    assert ((inner > 0.65) & (inner < 0.95)).float().mean() > 0.8, warped


def test_time_warp_samples_where_the_loss_rises_and_round_trips():
    warp = TimeWarp(num_bins=32, window=4000, uniform_mix=0.1)
    u = torch.rand(4000)
    assert warp.warp(u).sub(u).abs().max() < 1e-6  # uniform until half a window of data
    t = torch.rand(5000)
    warp.update(t, torch.sigmoid((t - 0.8) * 40) * 6 + 0.3 * torch.randn(5000))  # noisy CE, rising at 0.8
    assert warp.ready
    samples = warp.warp(torch.rand(4000))
    share = ((samples > 0.7) & (samples < 0.9)).float().mean().item()
    assert share > 0.7  # uniform t would give 0.2
    assert samples.min() >= 0 and samples.max() <= 1
    clone = TimeWarp()
    clone.load_state_dict(warp.state_dict())
    u = torch.rand(100)
    torch.testing.assert_close(clone.warp(u), warp.warp(u))


def test_time_warp_forgets_the_untrained_model():
    """Stale high losses from early training must not keep the warp at the easy end (a bug seen here:
    per-bin running means of rarely sampled bins kept the untrained model's CE of ~16 nats)."""
    warp = TimeWarp(num_bins=16, window=1000, uniform_mix=0.1)
    t = torch.rand(1000)
    warp.update(t, torch.full_like(t, 16.0) - 5 * t)  # untrained: high everywhere, even falling
    t = torch.rand(1000)
    warp.update(t, torch.sigmoid((t - 0.85) * 50) * 8)  # trained: the rise is near t = 0.85
    assert warp.warp(torch.tensor([0.5], dtype=torch.float64)).item() > 0.75


def test_non_finite_losses_leave_the_warp_as_it_was():
    warp = TimeWarp(num_bins=16, window=1000, uniform_mix=0.1)
    t = torch.rand(1000)
    warp.update(t, torch.sigmoid((t - 0.8) * 30) * 6)
    u = torch.linspace(0, 1, 33, dtype=torch.float64)
    before, count = warp.warp(u), warp.count
    warp.update(torch.tensor([0.5, 0.9, float("nan")]), torch.tensor([float("nan"), float("inf"), 1.0]))
    assert warp.count == count
    torch.testing.assert_close(warp.warp(u), before)
    warp.update(torch.tensor([0.3, 0.95]), torch.tensor([float("nan"), 5.0]))  # the finite pair is kept
    assert warp.count == count + 1 and torch.isfinite(warp.curve()).all()


def test_isotonic_fit_is_monotone_and_exact_on_monotone_data():
    from dimba.diffusion.time_warp import isotonic_increasing
    y = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    torch.testing.assert_close(isotonic_increasing(y, torch.ones(3)), y)
    fit = isotonic_increasing(torch.tensor([1.0, 3.0, 2.0, 4.0], dtype=torch.float64), torch.ones(4))
    torch.testing.assert_close(fit, torch.tensor([1.0, 2.5, 2.5, 4.0], dtype=torch.float64))


def _toy_denoise(cond_x0, uncond_x0, calls):
    def denoise(x, t, tokens, clean, self_cond, drop):
        calls.append({"x": x.clone(), "t": t.clone(), "self_cond": self_cond, "uncond": drop is not None})
        x0 = uncond_x0 if drop is not None else cond_x0
        logits = torch.stack([-(x0 - v).pow(2).sum(-1) for v in TABLE], dim=-1)
        return logits, x0
    return denoise


TABLE = torch.eye(4) * 2


def gaussian_loop(denoise, sampler, shape, cfg, streams, on_step=None):
    """reverse_diffusion over `shape` (B, L, d) with nothing given."""
    tokens = torch.zeros(shape[:2], dtype=torch.long)
    return reverse_diffusion(denoise, sampler, Guidance(cfg.guidance, cfg.x0_temperature, TABLE), cfg, streams, tokens,
                             torch.zeros(shape[:2], dtype=torch.bool), on_step=on_step)


def test_guidance_extrapolates_what_is_fed_back():
    """Scale 1 calls only the conditional branch, 0 gives the unconditional answer, and at scale 3 the estimate
    the loop steps towards (fed back as self-conditioning) is x0_u + 3 (x0_c - x0_u)."""
    sampler = DDIMSampler(NoiseSchedule())
    cond = TABLE[torch.tensor([[0, 1, 2]])]
    uncond = TABLE[torch.tensor([[3, 3, 3]])]
    for g, expected, uses_uncond in ((1.0, [0, 1, 2], False), (0.0, [3, 3, 3], True)):
        calls = []
        tokens = gaussian_loop(_toy_denoise(cond, uncond, calls), sampler, (1, 3, 4),
                               SamplingConfig(steps=5, guidance=g, temperature=0), ExampleStreams(0, [0]))
        assert tokens.tolist() == [expected]
        assert any(c["uncond"] for c in calls) == uses_uncond
    calls = []
    gaussian_loop(_toy_denoise(cond, uncond, calls), sampler, (1, 3, 4),
                  SamplingConfig(steps=3, guidance=3.0, temperature=0), ExampleStreams(0, [0]))
    fed_back = [c["self_cond"] for c in calls if not c["uncond"]][1:]
    assert len(fed_back) == 2
    for x0_fed in fed_back:
        torch.testing.assert_close(x0_fed, uncond + 3 * (cond - uncond))


def test_reverse_diffusion_steps_from_the_starting_noise_towards_the_oracle():
    """An oracle denoiser: what the loop feeds it at step i is q_sample(x0, t_i, eps_hat) (eps_hat read off the
    starting noise), it reports every step, and it ends on the oracle's tokens. The loop's own noise comes
    from the example's stream: the same seed and example id give the same samples."""
    sched = NoiseSchedule()
    sampler = DDIMSampler(sched)
    target = TABLE[torch.tensor([[2, 0, 1, 3]])]
    calls, seen_steps = [], []
    tokens = gaussian_loop(_toy_denoise(target, target, calls), sampler, (1, 4, 4),
                           SamplingConfig(steps=6, temperature=0, seed=0), ExampleStreams(0, [7]),
                               on_step=lambda i, guess: seen_steps.append((i, guess.tolist())))
    assert tokens.tolist() == [[2, 0, 1, 3]]
    assert seen_steps == [(i, [[2, 0, 1, 3]]) for i in range(6)]
    x1 = calls[0]["x"]
    torch.testing.assert_close(x1, ExampleStreams(0, [7]).randn(4, 4))
    abar1 = sched.alpha_bar(calls[0]["t"][:1])
    eps_hat = (x1 - abar1.sqrt() * target) / (1 - abar1).sqrt()
    for call in calls[1:]:
        expected = sched.q_sample(target, call["t"], eps_hat)
        torch.testing.assert_close(call["x"], expected, rtol=1e-4, atol=1e-4)


def test_ddpm_and_clamping_end_on_the_oracle():
    sampler = DDIMSampler.named("ddpm", NoiseSchedule())
    target = TABLE[torch.tensor([[2, 0, 1, 3]])]
    tokens = gaussian_loop(_toy_denoise(target, target, []), sampler, (1, 4, 4),
                           SamplingConfig(sampler="ddpm", steps=6, temperature=0, clamp_from=0.5),
                               ExampleStreams(0, [0]))
    assert tokens.tolist() == [[2, 0, 1, 3]]


def test_x0_temperature_sharpens_the_estimate_towards_the_likeliest_token():
    """A denoiser torn between tokens 0 (logit 1) and 1 (logit 0): at x0 temperature 1 the loop steps towards
    the model's own mixture, at a low temperature towards token 0's embedding."""
    seen = []

    def torn(x_t, t, tokens, clean, self_cond, drop):
        logits = torch.tensor([1.0, 0.0, -9.0, -9.0]).expand(1, 2, 4)
        seen.append(self_cond)
        return logits, torch.softmax(logits, -1) @ TABLE

    sampler = DDIMSampler(NoiseSchedule())
    for x0_temperature in (1.0, 0.05):
        seen.clear()
        gaussian_loop(torn, sampler, (1, 2, 4), SamplingConfig(steps=3, x0_temperature=x0_temperature),
                          ExampleStreams(0, [0]))
        weights = torch.softmax(torch.tensor([1.0, 0.0, -9.0, -9.0]) / x0_temperature, -1)
        torch.testing.assert_close(seen[-1][0, 0], weights @ TABLE)  # the estimate fed back is the sharpened one
    assert seen[-1][0, 0, 0] > 1.99  # ~ token 0's embedding (2, 0, 0, 0)
    with pytest.raises(ValueError, match="x0_temperature"):
        SamplingConfig(x0_temperature=0)


def test_sample_tokens_temperature_zero_and_top_p():
    logits = torch.tensor([[4.0, 3.0, 0.0, -1.0]]).expand(5000, 4)
    assert (sample_tokens(logits, temperature=0) == 0).all()
    p = torch.softmax(logits[0], -1)
    nucleus = int((p.cumsum(0) - p < 0.9).sum())  # tokens needed to reach 0.9
    drawn = sample_tokens(logits, top_p=0.9, streams=ExampleStreams(0, range(5000)))
    assert set(drawn.unique().tolist()) == set(range(nucleus))
    with pytest.raises(ValueError):
        sample_tokens(logits, top_p=0.0)


def test_losses_only_count_masked_positions():
    logits = torch.zeros(1, 3, 5)
    logits[0, 0, 2] = 10.0  # position 0 right
    tokens = torch.tensor([[2, 4, 4]])
    x0 = torch.zeros(1, 3, 2)
    x0_hat = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]])
    only_first = diffusion_loss(logits, x0_hat, x0, tokens, torch.tensor([[True, False, False]]))
    assert only_first.mse.item() == 0 and only_first.accuracy.item() == 1
    last_two = diffusion_loss(logits, x0_hat, x0, tokens, torch.tensor([[False, True, True]]))
    assert last_two.mse.item() == pytest.approx((1 + 4) / 2)
    assert last_two.ce.item() == pytest.approx(math.log(5))
    assert last_two.total.item() == pytest.approx(2.5 + math.log(5))


def test_sampling_noise_does_not_replay_the_initialisation_stream():
    """A seeded sampling generator must not give the draws `torch.manual_seed(seed)` gave the model's
    initialisation (seed 0 once turned half a batch of starting noise into the initial embedding table)."""
    from dimba.sampling import sampling_generator

    torch.manual_seed(0)
    init = torch.randn(4096 * 64 * 2)  # an nn.Embedding(4096, 64) built twice, as the denoiser does
    noise = torch.randn(64 * 128 * 64, generator=sampling_generator(0))
    # Independent float32 normals share ~0.5% of values by chance; the old seeding shared all of a half.
    assert torch.isin(noise, init).float().mean() < 0.05
    # Still reproducible per seed, different across seeds and across streams.
    draw = lambda seed, stream="sampling": torch.randn(8, generator=sampling_generator(seed, stream=stream))
    assert torch.equal(draw(0), draw(0)) and not torch.equal(draw(0), draw(1))
    assert not torch.equal(draw(0), draw(0, "validation"))


def test_ddim_with_eta_between_zero_and_one_has_the_papers_variance():
    """Song et al. 2021, eq. 16: sigma = eta sqrt((1 - abar_prev)/(1 - abar_t)) sqrt(1 - abar_t / abar_prev),
    and the rest of the variance (1 - abar_prev - sigma^2) goes to the predicted noise."""
    sched = NoiseSchedule("cosine")
    sampler = DDIMSampler(sched, eta=0.5)
    x_t, x0 = torch.randn(2, 3, 4, dtype=torch.float64), torch.randn(2, 3, 4, dtype=torch.float64)
    z = torch.randn(2, 3, 4, dtype=torch.float64)
    t, s = 0.6, 0.45
    a_t, a_s = (sched.alpha_bar(torch.tensor(v, dtype=torch.float64)) for v in (t, s))
    sigma = 0.5 * ((1 - a_s) / (1 - a_t) * (1 - a_t / a_s)).sqrt()
    eps = (x_t - a_t.sqrt() * x0) / (1 - a_t).sqrt()
    expected = a_s.sqrt() * x0 + (1 - a_s - sigma**2).sqrt() * eps + sigma * z
    torch.testing.assert_close(sampler.step(x_t, x0, t, s, z), expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="needs noise"):
        sampler.step(x_t, x0, t, s)


def test_self_conditioning_off_feeds_nothing_back_and_clamping_snaps_to_embeddings():
    sampler = DDIMSampler(NoiseSchedule())
    between = (TABLE[0] * 0.6 + TABLE[1] * 0.4).expand(1, 3, 4)  # nearest to token 0's embedding
    calls = []
    gaussian_loop(_toy_denoise(between, between, calls), sampler, (1, 3, 4),
                  SamplingConfig(steps=4, self_condition=False), ExampleStreams(0, [0]))
    assert all(c["self_cond"] is None for c in calls)
    calls = []
    gaussian_loop(_toy_denoise(between, between, calls), sampler, (1, 3, 4), SamplingConfig(steps=4, clamp_from=0.5),
                  ExampleStreams(0, [0]))
    fed = [c["self_cond"] for c in calls]
    torch.testing.assert_close(fed[1], between)  # after step 0 of 4: not clamped yet
    torch.testing.assert_close(fed[3], TABLE[0].expand(1, 3, 4))  # after step 2 >= 0.5 * 4: snapped
