"""The DIMBA denoiser and LightningModule: information flow, prompt handling, and a learning test."""

import warnings

import pytest
import torch

from dimba.diffusion.masks import random_prefix_mask
from dimba.errors import ConfigError
from dimba.models.config import DenoiserConfig, MambaConfig
from dimba.models.denoiser import DimbaDenoiser
from dimba.sampling import SamplingConfig
from dimba.training.dimba_lm import DimbaLM
from tests.helpers import LEARNING_NET, TINY_NET, overfit, sentence_ids


def tiny_net(**kw):
    return DimbaDenoiser(MambaConfig(**TINY_NET), DenoiserConfig(d_embed=8, **kw), 40).double()


def test_denoiser_is_bidirectional():
    net = tiny_net()
    # adaLN-Zero makes every block the identity at init; give the blocks non-zero modulation.
    for b in net.blocks:
        torch.nn.init.normal_(b.modulation.weight, std=0.1)
    B, L, j = 1, 9, 4
    tokens = torch.randint(0, 40, (B, L))
    mask = torch.zeros(B, L, dtype=torch.bool)
    x = torch.randn(B, L, 8, dtype=torch.float64)
    t = torch.full((B,), 0.5, dtype=torch.float64)
    base = net(x, t, tokens, mask)[0]
    x2 = x.clone()
    x2[:, j] += 1
    diff = (net(x2, t, tokens, mask)[0] - base).abs().sum(-1)[0]
    assert diff[:j].min() > 1e-8 and diff[j + 1:].min() > 1e-8


def test_blocks_start_as_identity():
    net = tiny_net()
    h = torch.randn(2, 6, 32, dtype=torch.float64)
    c = torch.randn(2, 32, dtype=torch.float64)
    for b in net.blocks:
        torch.testing.assert_close(b(h, c), h)


WIDE = dict(head="untied", wide_input=True)


@pytest.mark.parametrize("kw", [{}, WIDE], ids=["latent_input", "wide_input"])
def test_no_gradient_from_target_through_the_prompt_encoder(kw):
    net = tiny_net(**kw)
    # adaLN-Zero blocks are the identity at init, so nothing would reach the output: make them do something.
    for b in net.blocks:
        torch.nn.init.normal_(b.modulation.weight, std=0.1)
    tokens = torch.randint(0, 40, (2, 8))
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[:, :3] = True
    clean = net.embed(tokens).detach().requires_grad_(True)
    net.prompt_encoder(clean, mask).sum().backward()
    assert clean.grad[:, :3].abs().sum() > 0
    assert clean.grad[:, 3:].abs().sum() == 0  # target positions never reach C
    # And through the whole network: changing a target token (not its noised input) changes nothing, while
    # changing a prompt token does.
    x = torch.randn(2, 8, 8, dtype=torch.float64)
    t = torch.full((2,), 0.4, dtype=torch.float64)
    other = tokens.clone()
    other[:, 5] = (tokens[:, 5] + 1) % 40
    torch.testing.assert_close(net(x, t, tokens, mask)[0], net(x, t, other, mask)[0])
    other[:, 1] = (tokens[:, 1] + 1) % 40
    assert not torch.allclose(net(x, t, tokens, mask)[0], net(x, t, other, mask)[0])


@pytest.mark.parametrize("kw", [{}, WIDE], ids=["latent_input", "wide_input"])
def test_dropped_prompt_hides_the_prompt(kw):
    net = tiny_net(**kw)
    for b in net.blocks:
        torch.nn.init.normal_(b.modulation.weight, std=0.1)
    tokens = torch.randint(0, 40, (1, 8))
    other = tokens.clone()
    other[:, 1] = (tokens[:, 1] + 1) % 40
    mask = torch.zeros(1, 8, dtype=torch.bool)
    mask[:, :3] = True
    x = torch.randn(1, 8, 8, dtype=torch.float64)
    t = torch.full((1,), 0.4, dtype=torch.float64)
    drop = torch.tensor([True])
    torch.testing.assert_close(net(x, t, tokens, mask, drop_prompt=drop)[0],
                               net(x, t, other, mask, drop_prompt=drop)[0])
    assert not torch.allclose(net(x, t, tokens, mask)[0], net(x, t, other, mask)[0])


@pytest.mark.parametrize("wide", [False, True])
def test_the_wide_input_carries_clean_tokens_past_the_latent_space(wide):
    """With the latent path cut (in_proj zero) and no prompt (the prompt encoder sees nothing), a revealed
    token reaches the output only through the wide input (the untied head's rows)."""
    net = tiny_net(head="untied", wide_input=wide)
    for b in net.blocks:
        torch.nn.init.normal_(b.modulation.weight, std=0.1)
    torch.nn.init.normal_(net.head.weight, std=0.1)
    torch.nn.init.zeros_(net.in_proj.weight)
    tokens = torch.randint(0, 40, (1, 8))
    other = tokens.clone()
    other[:, 1] = (tokens[:, 1] + 1) % 40
    no_prompt = torch.zeros(1, 8, dtype=torch.bool)
    revealed = torch.zeros(1, 8, dtype=torch.bool)
    revealed[:, :3] = True
    x, t = torch.randn(1, 8, 8, dtype=torch.float64), torch.full((1,), 0.4, dtype=torch.float64)
    a = net(x, t, tokens, no_prompt, clean_mask=revealed)[0]
    b = net(x, t, other, no_prompt, clean_mask=revealed)[0]
    assert not torch.allclose(a, b) if wide else torch.equal(a, b)
    with pytest.raises(ConfigError, match="wide_input needs denoiser.head: untied"):
        DenoiserConfig(wide_input=True)


@pytest.mark.parametrize("head", ["tied", "untied"])
def test_logits_and_x0_hat_are_fp32_under_bf16_autocast(head):
    net = DimbaDenoiser(MambaConfig(**TINY_NET), DenoiserConfig(d_embed=8, head=head), 40)
    tokens = torch.randint(0, 40, (2, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, x0_hat = net(torch.randn(2, 8, 8), torch.full((2,), 0.5), tokens, torch.zeros(2, 8, dtype=torch.bool))
    assert logits.dtype == torch.float32 and x0_hat.dtype == torch.float32


def test_the_untied_head_starts_uniform_and_learns_a_per_token_prior():
    """head: untied maps the backbone's width to the vocabulary with a bias (zero-init: uniform logits, x0_hat
    the mean embedding); a few Adam steps on a skewed target move the bias towards that marginal, which the
    tied head of a normalised table cannot express directly."""
    net = tiny_net(head="untied")
    assert net.out_proj is None and net.head.bias.shape == (40,)
    tokens = torch.randint(0, 40, (2, 8))
    mask = torch.zeros(2, 8, dtype=torch.bool)
    x, t = torch.randn(2, 8, 8, dtype=torch.float64), torch.full((2,), 0.9, dtype=torch.float64)
    logits, x0_hat = net(x, t, tokens, mask)
    assert logits.abs().max() == 0
    torch.testing.assert_close(x0_hat, net.embedding_table().mean(0).expand_as(x0_hat))
    target = torch.full((2, 8), 7)
    opt = torch.optim.Adam(net.head.parameters(), lr=0.1)
    for _ in range(20):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x, t, tokens, mask)[0].flatten(0, 1), target.flatten()).backward()
        opt.step()
    assert net.head.bias.argmax() == 7
    assert net(x, t, tokens, mask)[0].softmax(-1)[..., 7].min() > 0.9


def test_random_prefix_mask_shapes_and_rates():
    torch.manual_seed(0)
    m = random_prefix_mask(4000, 20, prompt_prob=0.5, max_prompt_frac=0.5)
    lengths = m.sum(1)
    assert (m == (torch.arange(20)[None] < lengths[:, None])).all()  # a prefix
    assert 0.45 < (lengths > 0).float().mean() < 0.55
    assert lengths.max() == 10


def test_a_small_model_overfits_sentences_and_completes_them():
    """Learning test: 4 sentences, word-level; prompted with the first two words, DDIM with 20 steps from
    fresh noise must reproduce the other eight exactly."""
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    vocab, ids = sentence_ids()
    model, _ = overfit(DimbaLM(net=LEARNING_NET, denoiser=dict(d_embed=16), vocab_size=vocab, seq_len=10,
                               prompt=dict(prompt_prob=0.9, cfg_dropout=0.0)), ids, 600)
    completions = model.generate([s[:2].tolist() for s in ids], 8, SamplingConfig(steps=20, temperature=0, seed=123))
    assert completions == ids[:, 2:].tolist()


def test_the_embedding_table_cached_for_sampling_follows_the_weights():
    net = tiny_net()
    with torch.no_grad():
        first = net.embedding_table()
        assert net.embedding_table() is first  # sampling calls it several times per step: computed once
        net.embedding.weight.mul_(2.0)  # an optimizer step, a loaded state dict, EMA swapping weights in
        changed = net.embedding_table()
    assert changed is not first and torch.equal(changed, net.embedding_table())
    assert net.embedding_table().requires_grad  # with gradients it is never the cached copy
