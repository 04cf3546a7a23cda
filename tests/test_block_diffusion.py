"""Block diffusion on the Mamba-2 state (`net.block_size`): the mixer carries its state exactly, the training pass
(two streams) computes what generation computes block by block, no block sees anything after it, one block is
today's model, every kind learns and generates block by block, past its training context."""

import warnings

import pytest
import torch

import dimba
from dimba.models.config import DenoiserConfig, MambaConfig
from dimba.models.denoiser import DimbaDenoiser
from dimba.models.mamba2 import Mamba2
from dimba.models.masked import MaskedDenoiser
from dimba.sampling import SamplingConfig
from tests.helpers import LEARNING_NET, TINY_NET, dimba_in_process, fit_args, overfit, sentence_ids

BLOCK, N_BLOCKS, BATCH = 4, 3, 2
LENGTH = BLOCK * N_BLOCKS


def mixer(chunk_size=8):
    torch.manual_seed(0)
    return Mamba2(32, d_state=8, headdim=8, chunk_size=chunk_size, impl="torch").double()


@pytest.mark.parametrize("split", [1, 3, 8, 13])
def test_the_mixer_continues_from_its_state_exactly(split):
    """prefill(a) then prefill(b, state) is forward(a + b), and the final states agree: the state is the cache."""
    m = mixer()
    u = torch.randn(2, 24, 32, dtype=torch.float64)
    whole, end = m.prefill(u)
    head, state = m.prefill(u[:, :split])
    tail, after = m.prefill(u[:, split:], state=state)
    torch.testing.assert_close(torch.cat([head, tail], 1), whole, rtol=0, atol=1e-12)
    torch.testing.assert_close(after.ssm, end.ssm, rtol=0, atol=1e-12)
    torch.testing.assert_close(after.conv, end.conv, rtol=0, atol=1e-12)


@pytest.mark.parametrize("chunk_size", [2, 4, 8, 64])
def test_the_two_streams_of_a_mixer_are_generation_block_by_block(chunk_size):
    """Noisy block k starts from the clean stream's state at its start (SSM state and conv tail), whatever the chunk
    size: the same as prefilling the clean blocks before it, then the noisy block."""
    m = mixer(chunk_size)
    clean = torch.randn(BATCH, LENGTH, 32, dtype=torch.float64)
    noisy = torch.randn(BATCH * N_BLOCKS, BLOCK, 32, dtype=torch.float64)
    y_clean, y_noisy = m.two_stream(clean, noisy, BLOCK)
    torch.testing.assert_close(y_clean, m(clean), rtol=0, atol=1e-12)
    for b in range(BATCH):
        for k in range(N_BLOCKS):
            state = m.prefill(clean[b:b + 1, :k * BLOCK])[1] if k else None
            expected = m.prefill(noisy[b * N_BLOCKS + k:b * N_BLOCKS + k + 1], state=state)[0]
            torch.testing.assert_close(y_noisy[b * N_BLOCKS + k], expected[0], rtol=0, atol=1e-12)


def dimba_net(wide=True, dtype=torch.float64):
    torch.manual_seed(0)
    net = DimbaDenoiser(MambaConfig(**{**TINY_NET, "block_size": BLOCK}),
                        DenoiserConfig(d_embed=8, head="untied" if wide else "tied", wide_input=wide), 40).to(dtype)
    for block in net.blocks:  # adaLN-Zero blocks are the identity at init: make them do something
        torch.nn.init.normal_(block.modulation.weight, std=0.1)
    if wide:
        torch.nn.init.normal_(net.head.weight, std=0.1)
    return net


def dimba_inputs(dtype=torch.float64):
    torch.manual_seed(1)
    tokens = torch.randint(0, 40, (BATCH, LENGTH))
    prompt = torch.zeros(BATCH, LENGTH, dtype=torch.bool)
    prompt[:, :2] = True
    clean = prompt.clone()
    clean[:, 6] = True  # a token revealed inside the second block
    x_t = torch.randn(BATCH, LENGTH, 8, dtype=dtype)
    t = torch.rand(BATCH, N_BLOCKS, dtype=dtype)
    self_cond = torch.randn(BATCH, LENGTH, 8, dtype=dtype)
    return tokens, prompt, clean, x_t, t, self_cond


@pytest.mark.parametrize("wide", [False, True], ids=["tied", "wide_input"])
@pytest.mark.parametrize("drop", [False, True], ids=["conditional", "prompt_dropped"])
def test_the_training_pass_is_what_generation_computes_block_by_block(wide, drop):
    """The denoiser's two streams (one time per block) against start_blocks / denoise_block / advance over the
    same blocks, in fp32."""
    net = dimba_net(wide, torch.float32)
    tokens, prompt, clean, x_t, t, self_cond = dimba_inputs(torch.float32)
    dropped = torch.tensor([drop, False])
    logits, x0_hat = net(x_t, t, tokens, prompt, self_cond, dropped, clean)
    state = net.start_blocks(tokens, prompt, dropped)
    for k in range(N_BLOCKS):
        s = slice(k * BLOCK, (k + 1) * BLOCK)
        got, got_x0 = net.denoise_block(state, x_t[:, s], t[:, k], tokens[:, s], prompt[:, s], self_cond[:, s],
                                        clean[:, s])
        torch.testing.assert_close(got, logits[:, s], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got_x0, x0_hat[:, s], rtol=1e-4, atol=1e-4)
        state = net.advance(state, tokens[:, s], prompt[:, s])


def test_the_masked_training_pass_is_what_generation_computes_block_by_block():
    torch.manual_seed(0)
    net = MaskedDenoiser(MambaConfig(**{**TINY_NET, "block_size": BLOCK}), 40)
    clean = torch.randint(0, 40, (BATCH, LENGTH))
    noisy = clean.masked_fill(torch.rand(BATCH, LENGTH) < 0.5, net.mask_id)
    logits, state = net(noisy, clean), net.start_blocks()
    for k in range(N_BLOCKS):
        s = slice(k * BLOCK, (k + 1) * BLOCK)
        torch.testing.assert_close(net.denoise_block(state, noisy[:, s]), logits[:, s], rtol=1e-4, atol=1e-4)
        state = net.advance(state, clean[:, s])


def test_no_information_reaches_a_block_from_any_later_block():
    """Change anything at or after block k+1, clean (tokens the clean stream reads) or noisy (latents): block k's
    output does not move, bit for bit; change a clean token of block k-1 and it does (the control). Within
    block k, only its own clean positions are read as tokens."""
    net = dimba_net()
    tokens, prompt, clean, x_t, t, self_cond = dimba_inputs()
    k = 1
    mine = slice(k * BLOCK, (k + 1) * BLOCK)
    base = net(x_t, t, tokens, prompt, self_cond, None, clean)[0][:, mine]
    later = (k + 1) * BLOCK
    changed_tokens = tokens.clone()
    changed_tokens[:, later:] = (tokens[:, later:] + 1) % 40
    changed_tokens[:, k * BLOCK + 3] = (tokens[:, k * BLOCK + 3] + 1) % 40  # a hidden position of block k itself
    changed_x = x_t.clone()
    changed_x[:, later:] += 1.0
    changed_sc = self_cond.clone()
    changed_sc[:, later:] -= 1.0
    moved = net(changed_x, t, changed_tokens, prompt, changed_sc, None, clean)[0][:, mine]
    assert torch.equal(moved, base)
    other_t = t.clone()
    other_t[:, k + 1:] = 0.01
    assert torch.equal(net(x_t, other_t, tokens, prompt, self_cond, None, clean)[0][:, mine], base)
    earlier = tokens.clone()
    earlier[:, k * BLOCK - 1] = (tokens[:, k * BLOCK - 1] + 1) % 40
    assert not torch.allclose(net(x_t, t, earlier, prompt, self_cond, None, clean)[0][:, mine], base)


def test_one_block_is_the_model_without_blocks():
    """The two-stream pass over a single block is the ordinary whole-sequence forward (fp64); and a model whose
    block is its whole context trains and samples exactly as block_size 0, bit for bit."""
    net = dimba_net()
    tokens, prompt, clean, x_t, t, self_cond = dimba_inputs()
    whole = net(x_t, t[:, 0], tokens, prompt, self_cond, None, clean)
    table = net.embedding_table()
    clean_emb, cond = net._clean(tokens, prompt, None, table)
    h = net._inputs(x_t, tokens, prompt, self_cond, None, clean, clean_emb)
    net.block_size = LENGTH
    streams = net._head(net.two_stream(h, t[:, :1], tokens, prompt, None, clean_emb,
                                       net.prompt_encoder(clean_emb, cond)), table, None)
    for a, b in zip(streams, whole, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)

    from dimba.training.hybrid_lm import HybridLM

    models = []
    for block in (0, 16):
        torch.manual_seed(0)
        models.append(HybridLM(net={**TINY_NET, "block_size": block}, denoiser={"d_embed": 8}, vocab_size=40,
                               seq_len=16).eval())
    batch = torch.randint(0, 40, (4, 16))
    losses = []
    for model in models:
        torch.manual_seed(3)
        losses.append(model.loss(batch).total)
    assert torch.equal(*losses)
    cfg = SamplingConfig(steps=3, seed=5)
    assert models[0].generate([[1, 2]], 14, cfg) == models[1].generate([[1, 2]], 14, cfg)


def test_each_block_draws_its_own_time_and_the_loss_counts_blocks_as_examples():
    from dimba.training.dimba_lm import DimbaLM
    from dimba.training.masked_lm import MaskedLM
    from tests.helpers import no_trainer

    gaussian = no_trainer(DimbaLM(net={**TINY_NET, "block_size": 4}, denoiser={"d_embed": 8},
                                  time_warp={"window": 64}, vocab_size=40, seq_len=16))
    out = gaussian.loss(torch.randint(0, 40, (3, 16)))
    assert out.t.shape == (12,) and out.per_example_ce.shape == (12,) and len(set(out.t.tolist())) == 12
    gaussian.training_step(torch.randint(0, 40, (3, 16)), 0)
    assert gaussian.warp.count == 12  # one (t, CE) pair per block
    masked = MaskedLM(net={**TINY_NET, "block_size": 4}, vocab_size=40, seq_len=16)
    assert torch.isfinite(masked.loss(torch.randint(0, 40, (3, 16))).total)
    with pytest.raises(ValueError, match="multiple of net.block_size"):
        MaskedLM(net={**TINY_NET, "block_size": 5}, vocab_size=40, seq_len=16)


@pytest.mark.parametrize("kind", [pytest.param("masked", marks=pytest.mark.slow), "hybrid"])
def test_a_small_block_model_overfits_sentences_and_completes_them_block_by_block(kind):
    """Learning test: blocks of 5 over 10 words; prompted with the first two, the model writes the other eight
    exactly, the first block around its given words, the second after the first's state."""
    from dimba.training.hybrid_lm import HybridLM
    from dimba.training.masked_lm import MaskedLM

    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    vocab, ids = sentence_ids()
    net = {**LEARNING_NET, "block_size": 5}
    if kind == "masked":
        model = MaskedLM(net=net, prompt=dict(prompt_prob=0.9), vocab_size=vocab, seq_len=10)
    else:
        model = HybridLM(net=net, denoiser=dict(d_embed=16, head="untied", wide_input=True),
                         diffusion={"schedule": "rank", "skip_logits": True},
                         prompt=dict(prompt_prob=0.9, cfg_dropout=0.0), vocab_size=vocab, seq_len=10)
    model, _ = overfit(model, ids, 300 if kind == "masked" else 400)
    calls = []
    real = model.sample_span
    model.sample_span = lambda tokens, *a: calls.append(tokens.shape[1]) or real(tokens, *a)
    out = model.generate([s[:2].tolist() for s in ids], 8, SamplingConfig(steps=5, temperature=0,
                                                                          reveal="confidence", seed=3))
    assert out == ids[:, 2:].tolist()
    assert calls == [5, 5]  # two blocks, each sampled over its 5 positions only


def test_generation_stops_after_the_block_where_every_row_ended(trained_block):
    model = dimba.load(trained_block, device="cpu")
    eos = model.eos_id
    calls = []

    def writes_the_end(tokens, given, cfg, streams, on_step, cache):
        calls.append(1)
        return torch.full_like(tokens, eos)

    model.sample_span = writes_the_end
    out = model.generate([[5, 6, 7]], 60, SamplingConfig(steps=2))
    assert len(calls) == 1 and out == [[eos] * 60]
    calls.clear()
    assert model.generate([[5, 6, 7]], 60, SamplingConfig(steps=2, stop_at_eos=False)) == [[eos] * 60]
    assert len(calls) == 60 // model.block_size + 1  # every block sampled: the one holding the prompt too


def test_a_block_model_trains_and_generates_past_its_context_through_the_cli(trained_block, workdir):
    """Trained on 32 tokens with blocks of 8, it writes 200; the single prompt is streamed to stdout as blocks are
    committed, and the printed text is the completion, once."""
    result = dimba_in_process("predict", "--ckpt_path", trained_block, "--prompt", "The king", "--length", 200,
                              "--sampling.steps", 2, "--sampling.seed", 1)
    assert result.returncode == 0, result.stderr[-2000:]
    model = dimba.load(trained_block, device="cpu")
    expected = model.complete("The king", length=200, steps=2, seed=1)
    assert result.stdout == "The king" + expected + "\n"
    assert model.max_length > 200
    assert model.describe(SamplingConfig(steps=2)).startswith("DIMBA hybrid block 8, 2 steps per block")
    infill = dimba_in_process("predict", "--ckpt_path", trained_block, "--infill", "true", "--prompt",
                              "The king {{3}} the queen {{40}} and so", "--sampling.steps", 2)
    assert infill.returncode == 0 and infill.stdout.startswith("The king ") and "the queen" in infill.stdout
    folder = workdir / "block8_export"
    assert dimba_in_process("export", "--ckpt_path", trained_block, "--out_dir", folder).returncode == 0
    assert dimba.load(folder, device="cpu").complete("The king", length=200, steps=2, seed=1) == expected


@pytest.fixture(scope="module")
def trained_block(workdir):
    """The default (hybrid) model with blocks of 8, trained a few steps by `dimba fit`."""
    from tests.helpers import ckpt_dir

    result = dimba_in_process(*fit_args(workdir, "block8", "--model.init_args.net.block_size", 8, model=None))
    assert result.returncode == 0, result.stderr[-3000:]
    return ckpt_dir(workdir, "block8") / "last.ckpt"


def test_eval_judges_generation_past_the_training_context(trained_block, trained, trained_ar, workdir, tmp_path):
    """`dimba eval --long_lengths`: the first and the last window of long completions, judged alike; a model that
    cannot go past its context is refused before any work."""
    import json

    common = ["--judge_ckpt_path", trained_ar, "--source", workdir / "corpus", "--num_prompts", 2, "--prompt_len", 8,
              "--gen_len", 8, "--grid", "{steps: [1]}", "--ablations", "{}", "--at_steps", 1, "--long_lengths", "[80]"]
    result = dimba_in_process("eval", "--ckpt_path", trained_block, *common, "--out_dir", tmp_path / "long")
    assert result.returncode == 0, result.stderr[-2000:]
    (row,) = json.loads((tmp_path / "long" / "results.json").read_text())["long"]
    assert row["length"] == 80 and row["first_gen_ppl"] > 1 and 0 <= row["ended_early"] <= 1
    assert ("last_gen_ppl" in row) == (row["ended_early"] < 1)
    assert "Past the training context" in (tmp_path / "long" / "results.md").read_text()
    refused = dimba_in_process("eval", "--ckpt_path", trained, *common, "--out_dir", tmp_path / "refused")
    assert refused.returncode == 2 and "generates at most 32 tokens" in refused.stderr


def test_a_request_without_steps_gets_the_models_own(trained_block, trained, trained_ar, tmp_path):
    """steps unset (the default): a block model takes its block size per block (one token per network call), a
    whole-sequence model 32, the AR model none; `predict --output` records the steps it used."""
    import json

    from dimba.training.checkpoint import load_for_inference

    block, whole, ar = (load_for_inference(path, "cpu") for path in (trained_block, trained, trained_ar))
    assert (block.resolve_sampling(SamplingConfig()).steps, whole.resolve_sampling(SamplingConfig()).steps) == (8, 32)
    assert ar.resolve_sampling(SamplingConfig()).steps is None
    assert block.resolve_sampling(SamplingConfig(steps=2)).steps == 2
    assert block.describe(SamplingConfig()).startswith("DIMBA hybrid block 8, 8 steps per block")
    out = tmp_path / "rows.jsonl"
    result = dimba_in_process("predict", "--ckpt_path", trained_block, "--prompt", "The king", "--length", 8,
                              "--output", out)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(out.read_text())["steps"] == 8
