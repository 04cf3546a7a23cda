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
                                 dict(temperature=math.inf), dict(guidance=-1.0), dict(steps=2.5), dict(steps=True),
                                 dict(seed="x"), dict(self_condition="yes")])
def test_sampling_config_refuses_bad_settings_in_one_line(bad):
    with pytest.raises(ConfigError) as err:
        SamplingConfig(**bad)
    assert "\n" not in str(err.value) and next(iter(bad)) in str(err.value)


def test_changed_names_the_options_that_differ_from_their_defaults():
    assert SamplingConfig(seed=3).changed() == set()
    assert SamplingConfig(steps=8, guidance=2.0).changed() == {"steps", "guidance"}


def test_sampling_config_is_every_sampling_verbs_flag_group():
    """`--sampling.NAME VALUE` on the command line (jsonargparse over the dataclass): the same checks, help from the
    field docstrings."""
    from jsonargparse import ArgumentParser, set_parsing_settings

    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--sampling", type=SamplingConfig, default=SamplingConfig())
    cfg = parser.instantiate(parser.parse_args(["--sampling.reveal", "confidence", "--sampling.steps", "8",
                                                        "--sampling.self_condition", "false"])).sampling
    assert cfg == SamplingConfig(reveal="confidence", steps=8, self_condition=False)
    assert "the most probable first" in parser.format_help()
    with pytest.raises(ConfigError, match=re.escape("eta must be in [0, 1]")):
        parser.instantiate(parser.parse_args(["--sampling.eta", "3"]))
