import math

import pytest
import torch

from dimba.eval.metrics import distinct_n, diversity, repeated_ngram_rate, unigram_entropy
from dimba.eval.quality import judge_nll, span_nats
from tests.helpers import tiny_ar


def test_unigram_entropy_known_values():
    assert unigram_entropy([[1, 1, 1, 1]]) == 0
    assert unigram_entropy([[1, 2], [3, 4]]) == pytest.approx(2.0)
    assert unigram_entropy([[1, 1, 2]]) == pytest.approx(-(2 / 3) * math.log2(2 / 3) - (1 / 3) * math.log2(1 / 3))


def test_distinct_n_known_values():
    assert distinct_n([[1, 2, 3, 4]], 1) == 1.0
    assert distinct_n([[1, 1, 1, 1]], 1) == 0.25
    assert distinct_n([[1, 2, 1, 2]], 2) == pytest.approx(2 / 3)  # (1,2) (2,1) (1,2)
    assert distinct_n([[1, 2]], 3) == 0.0


def test_repeated_ngram_rate_known_values():
    assert repeated_ngram_rate([[1, 2, 3, 4, 5]], 2) == 0.0
    assert repeated_ngram_rate([[7, 7, 7, 7, 7]], 2) == pytest.approx(3 / 4)
    # Repeats count within a sample only.
    assert repeated_ngram_rate([[1, 2], [1, 2]], 2) == 0.0


def test_diversity_has_every_measure():
    d = diversity([[1, 2, 3, 4, 5, 6]])
    assert set(d) == {"entropy_bits", "distinct_1", "distinct_2", "distinct_3", "distinct_4", "repeat_4"}
    assert d["distinct_4"] == 1.0 and d["repeat_4"] == 0.0


def test_span_nats_split_the_judges_nll_of_whole_rows_by_the_chain_rule():
    # The infilling scores (nats on the gap, nats after it) condition each span on everything before it: the
    # spans' nats then add up to the judge's NLL of the whole rows; a span read with one token too few or too
    # many of context (or of itself) would not.
    torch.manual_seed(0)
    judge = tiny_ar(vocab_size=20).eval()
    rows = torch.randint(1, 20, (3, 12)).tolist()
    whole, count = judge_nll(judge, [[] for _ in rows], rows)
    assert count == 36
    spans = [(0, 5), (5, 9), (9, 12)]
    parts = sum(span_nats(judge, rows, lo, hi) * (hi - lo) * len(rows) for lo, hi in spans)
    assert parts == pytest.approx(whole, rel=1e-4)
    assert span_nats(judge, rows, 5, 9) != pytest.approx(span_nats(judge, [r[5:] for r in rows], 0, 4), rel=1e-3)
