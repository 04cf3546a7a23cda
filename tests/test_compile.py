"""Generation through torch.compile (`compile_generation`, `dimba bench --compile`) gives what eager gives,
and really runs compiled graphs. Slow (compilation takes tens of seconds on a CPU): `make test-slow`."""

import pytest
import torch
from torch._dynamo.utils import counters

from dimba.sampling import SamplingConfig
from tests.helpers import tiny_ar, tiny_dimba


def compiled_graphs() -> int:
    return counters["stats"]["unique_graphs"]


@pytest.mark.slow
def test_compiled_ar_decoding_matches_eager():
    model = tiny_ar().eval()
    prompts = [[1, 2, 3], [4]]  # different lengths: batched states from separate prefills
    greedy = SamplingConfig(temperature=0)
    eager = model.generate(prompts, 6, greedy)
    model.compile_generation()
    before = compiled_graphs()
    assert model.generate(prompts, 6, greedy) == eager
    assert compiled_graphs() > before


@pytest.mark.slow
def test_compiled_dimba_sampling_matches_eager():
    model = tiny_dimba().eval()
    for block in model.net.blocks:  # adaLN-Zero blocks are the identity at init; make them do something
        torch.nn.init.normal_(block.modulation.weight, std=0.1)
    cfg = SamplingConfig(steps=3, temperature=0, seed=0)
    eager = model.generate([[5, 6], [7]], 8, cfg)
    model.compile_generation()
    before = compiled_graphs()
    assert model.generate([[5, 6], [7]], 8, cfg) == eager
    assert compiled_graphs() > before
    assert not any("_compiled" in k for k in model.state_dict())  # nothing compiled lands in checkpoints
