"""SamplingConfig (one place for names, defaults and checks), per-example random streams, token draws."""

import math
import re

import pytest
import torch

from dimba.errors import ConfigError
from dimba.sampling import ExampleStreams, SamplingConfig, draw_from, sample_tokens


def test_draws_follow_the_probabilities_and_never_pick_an_impossible_token():
    probs = torch.tensor([0.5, 0.0, 0.3, 0.2, 0.0])
    drawn = draw_from(probs.expand(20000, 5), ExampleStreams(0, range(20000)))
    freq = torch.bincount(drawn, minlength=5).float() / 20000
    assert freq[1] == 0 and freq[4] == 0
    torch.testing.assert_close(freq, probs, atol=0.015, rtol=0)  # ~4 standard errors at n = 20000


def test_an_example_draws_the_same_whatever_its_batch():
    """Example 3's stream is a function of (seed, 3) only: alone, or fourth in a batch, it draws the same."""
    logits = torch.randn(6, 10, 50)
    batch = sample_tokens(logits, streams=ExampleStreams(5, range(6)))
    alone = sample_tokens(logits[3:4], streams=ExampleStreams(5, [3]))
    assert torch.equal(batch[3:4], alone)
    assert not torch.equal(batch[0], batch[1])  # different examples, different streams
    other_seed = sample_tokens(logits, streams=ExampleStreams(6, range(6)))
    assert not torch.equal(batch, other_seed)
    fresh = [sample_tokens(logits, streams=ExampleStreams(None, range(6))) for _ in range(2)]
    assert not torch.equal(*fresh)


@pytest.mark.parametrize("bad", [dict(guidance=math.nan), dict(eta=7.0), dict(eta=-0.1), dict(steps=0),
                                 dict(top_p=0.0), dict(top_p=1.5), dict(temperature=-1.0), dict(x0_temperature=0.0),
                                 dict(clamp_from=2.0), dict(sampler="euler"), dict(reveal="left"),
                                 dict(latent_target="blend"), dict(step_spacing="log"), dict(temperature=math.inf),
                                 dict(guidance=-1.0)])
def test_sampling_config_refuses_bad_settings_in_one_line(bad):
    with pytest.raises(ConfigError) as err:
        SamplingConfig(**bad)
    assert "\n" not in str(err.value) and next(iter(bad)) in str(err.value)


def test_changed_names_the_options_that_differ_from_their_defaults():
    assert SamplingConfig(seed=3).changed() == set()
    assert SamplingConfig(steps=8, guidance=2.0).changed() == {"steps", "guidance"}


def test_overrides_parse_typed_names_and_refuse_bad_ones_in_one_line():
    from argparse import ArgumentTypeError

    from dimba.sampling import parse_overrides

    assert parse_overrides("reveal=confidence,eta=0.5,steps=8,self_condition=false") == {
        "reveal": "confidence", "eta": 0.5, "steps": 8, "self_condition": False}
    assert parse_overrides("") == {}
    for bad, message in [("temperature", "not NAME=VALUE"), ("speed=3", "not NAME=VALUE"),
                         ("steps=two", "steps must be of type int"), ("eta=3", "eta must be in [0, 1]"),
                         ("self_condition=yes", "self_condition must be of type bool"), ("seed=1", "not NAME=VALUE")]:
        with pytest.raises(ArgumentTypeError, match=re.escape(message)):
            parse_overrides(bad)
