import math

import pytest

from dimba.eval.metrics import distinct_n, diversity, repeated_ngram_rate, unigram_entropy


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
