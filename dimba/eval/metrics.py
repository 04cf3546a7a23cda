"""Sample-quality metrics over token sequences. Generative perplexity alone rewards dull, repetitive text,
so it is always reported with the diversity measures beside it."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence


def unigram_entropy(samples: Sequence[Sequence[int]]) -> float:
    """Entropy in bits of the pooled token distribution of all samples."""
    counts = Counter(t for s in samples for t in s)
    total = sum(counts.values())
    if total == 0:
        return 0.0
    return -sum(c / total * math.log2(c / total) for c in counts.values())


def ngrams(seq: Sequence[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]


def distinct_n(samples: Sequence[Sequence[int]], n: int) -> float:
    """Distinct n-grams over all n-grams, pooled over samples (Li et al. 2016); 1 = no n-gram repeats."""
    grams = [g for s in samples for g in ngrams(s, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repeated_ngram_rate(samples: Sequence[Sequence[int]], n: int = 4) -> float:
    """Share of n-grams that already occurred earlier in the same sample, averaged over n-grams."""
    repeated = total = 0
    for s in samples:
        seen = set()
        for g in ngrams(s, n):
            repeated += g in seen
            seen.add(g)
            total += 1
    return repeated / total if total else 0.0


def diversity(samples: Sequence[Sequence[int]]) -> dict[str, float]:
    """Entropy, distinct-1..4 and the repeated-4-gram rate of a set of samples."""
    out = {"entropy_bits": unigram_entropy(samples)}
    out.update({f"distinct_{n}": distinct_n(samples, n) for n in range(1, 5)})
    out["repeat_4"] = repeated_ngram_rate(samples, 4)
    return out
