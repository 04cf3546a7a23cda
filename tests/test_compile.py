"""Generation through torch.compile (`compile_generation`, `dimba bench --compile`) gives what eager gives,
and really runs compiled graphs."""

import torch
from torch._dynamo.utils import counters

from dimba.diffusion.generate import SamplingConfig
from dimba.lit_ar import ARLM
from dimba.lit_module import DimbaLM

TINY = dict(d_model=32, n_layers=2, d_state=8, headdim=8, chunk_size=4, impl="torch")


def compiled_graphs() -> int:
    return counters["stats"]["unique_graphs"]


def test_compiled_ar_decoding_matches_eager():
    model = ARLM(vocab_size=50, **TINY).eval()
    prompts = [[1, 2, 3], [4]]  # different lengths: batched states from separate prefills
    eager = model.generate(prompts, 6, temperature=0)
    model.compile_generation()
    before = compiled_graphs()
    assert model.generate(prompts, 6, temperature=0) == eager
    assert compiled_graphs() > before


def test_compiled_dimba_sampling_matches_eager():
    model = DimbaLM(vocab_size=40, seq_len=16, d_embed=8, **TINY).eval()
    for block in model.net.blocks:  # adaLN-Zero blocks are the identity at init; make them do something
        torch.nn.init.normal_(block.modulation.weight, std=0.1)
    cfg = SamplingConfig(steps=3, temperature=0, seed=0)
    eager, _ = model.generate([[5, 6], [7]], 8, cfg)
    model.compile_generation()
    before = compiled_graphs()
    assert model.generate([[5, 6], [7]], 8, cfg)[0] == eager
    assert compiled_graphs() > before
    assert not any("_compiled" in k for k in model.state_dict())  # nothing compiled lands in checkpoints
