"""The autoregressive baseline: recurrent decoding equals the full forward; generation and scoring."""

import pytest
import torch

from dimba.errors import DimbaError
from dimba.models.ar import ARLanguageModel
from dimba.models.config import MambaConfig
from dimba.sampling import SamplingConfig
from tests.helpers import TINY_NET, tiny_ar


def tiny(**kw):
    return ARLanguageModel(MambaConfig(**{**TINY_NET, **kw}), 50).double().eval()


def test_step_decoding_equals_full_forward_logits():
    net = tiny(mlp_ratio=2.0)
    tokens = torch.randint(0, 50, (3, 12))
    full = net(tokens)
    logits, states = net.prefill(tokens[:, :5])
    torch.testing.assert_close(logits, full[:, 4])
    for t in range(5, 12):
        logits, states = net.step(tokens[:, t], states)
        torch.testing.assert_close(logits, full[:, t], rtol=1e-9, atol=1e-9)


def test_teacher_forced_fill_equals_the_full_forward():
    """fill with given positions after a gap: the gap is drawn from the left context only (greedy: the full
    forward's argmax there), and given positions are fed as they are."""
    model = tiny_ar().eval()
    tokens = torch.randint(0, 50, (2, 10))
    given = torch.ones(2, 10, dtype=torch.bool)
    given[:, 3:6] = False  # a gap in the middle
    filled = torch.tensor(model.fill(tokens.tolist(), given.tolist(), SamplingConfig(temperature=0)))
    assert torch.equal(filled[given], tokens[given])
    eos = torch.zeros(2, 1, dtype=torch.long)  # the tiny model has no tokenizer: EOS is id 0
    logits = model.net(torch.cat([eos, filled], 1))
    for pos in range(3, 6):
        assert torch.equal(filled[:, pos], logits[:, pos].argmax(-1))


def test_generate_and_score():
    model = tiny_ar(net=dict(n_layers=1))
    out = model.generate([[1, 2, 3], []], 5, SamplingConfig(top_p=0.9, seed=0))
    assert [len(o) for o in out] == [5, 5] and all(0 <= t < 50 for o in out for t in o)
    assert model.generate([[1]], 4, SamplingConfig(seed=3)) == model.generate([[1]], 4, SamplingConfig(seed=3))
    greedy = model.generate([[1, 2]], 3, SamplingConfig(temperature=0))
    # Greedy decoding picks the argmax of the full forward at each position.
    seq = torch.tensor([[0, 1, 2] + greedy[0]])
    logits = model.net(seq)
    assert logits[0, 2:5].argmax(-1).tolist() == greedy[0]
    nll, count = model.score(seq, torch.ones_like(seq, dtype=torch.bool))
    assert count == 5 and nll > 0


def test_decoding_writes_past_the_training_context():
    """The recurrent state carries, as it does for block models: `dimba bench` times AR at 1024 tokens of a model
    trained on 128 (refused between 9355025 and this test)."""
    model = tiny_ar(net=dict(n_layers=1))
    out = model.generate([[1, 2]], 3 * model.seq_len, SamplingConfig(seed=0))
    assert len(out[0]) == 3 * model.seq_len
    with pytest.raises(DimbaError, match="more than"):
        model.generate([[1]], 10**9, SamplingConfig(seed=0))


def test_score_is_the_log_likelihood_of_the_masked_tokens_given_everything_before():
    """Against a hand-computed log-softmax gather, on a partial mask (a shifted mask would score the wrong
    tokens and corrupt every gen-PPL without anything else failing)."""
    model = tiny_ar().double().eval()
    tokens = torch.randint(0, 50, (2, 9))
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask[0, 3:7] = True
    mask[1, 5:] = True
    logp = torch.log_softmax(model.net(tokens).double(), -1)  # position i predicts token i + 1
    expected = -sum(logp[b, i - 1, tokens[b, i]] for b in range(2) for i in range(1, 9) if mask[b, i])
    nll, count = model.score(tokens, mask)
    assert count == 8
    assert nll == pytest.approx(float(expected), rel=1e-6)  # score works in fp32


def test_fim_rearranges_blocks_into_prefix_suffix_middle():
    model = tiny_ar(fim_rate=1.0, seq_len=20)
    pre, suf, mid = model.sentinels
    assert (pre, suf, mid) == (50, 51, 52) and model.net.embedding.num_embeddings == 53
    tokens = torch.randint(0, 50, (16, 20))
    out = model.fim_rearrange(tokens)
    for row, orig in zip(out.tolist(), tokens.tolist(), strict=True):
        assert row[0] == pre and row.count(suf) == 1 and row.count(mid) == 1 and row.index(suf) < row.index(mid)
        i, j = row.index(suf), row.index(mid)
        prefix, suffix, middle = row[1:i], row[i + 1:j], row[j + 1:]
        assert prefix + middle + suffix == orig[:17]  # the block minus room for the three sentinels
    assert tiny_ar().sentinels == () and tiny_ar().net.embedding.num_embeddings == 50


def test_a_fim_model_fills_a_gap_from_a_prefix_suffix_middle_prompt():
    model = tiny_ar(fim_rate=0.5).eval()
    prompts = []
    prefill = model.net.prefill
    model.net.prefill = lambda ids: prompts.append(ids[0].tolist()) or prefill(ids)
    tokens = [[5, 6, 7, 0, 0, 0, 8, 9, 0, 0]]
    given = [[True] * 3 + [False] * 3 + [True] * 2 + [False] * 2]
    filled = model.fill(tokens, given, SamplingConfig(seed=0))[0]
    pre, suf, mid = model.sentinels
    assert prompts[0] == [pre, 5, 6, 7, suf, 8, 9, mid]  # the middle gap knows what follows it
    assert prompts[1][0] == 0 and prompts[1][1:] == filled[:8]  # the trailing gap continues EOS + everything left
    assert filled[:3] == [5, 6, 7] and filled[6:8] == [8, 9] and all(0 <= t < 50 for t in filled)
