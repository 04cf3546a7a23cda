"""Turning logits into tokens: temperature and nucleus (top-p) sampling, shared by DIMBA and the AR model."""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor


def sampling_generator(seed: int | None, device: torch.device | str = "cpu", stream: str = "sampling"
                       ) -> torch.Generator:
    """A generator for sampling noise and tokens: fresh entropy for seed None, else seeded from a hash of
    (stream, seed) rather than from `seed` itself.

    Why the hash: `torch.Generator().manual_seed(s)` replays the stream that `torch.manual_seed(s)` (and so
    `seed_everything: s`) gave the model's initialisation. Seen here: with seed 0, a batch of 64 x 128
    positions of 64-d starting noise held the model's initial embedding table in its second half (tokens
    0..4095 in order); the sampler kept that "sequence" and those samples were judged at 12 nats/token
    against 8.2 for real noise. `stream` separates uses that must not share draws (sampling, validation).
    """
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()  # fresh entropy, without touching the global RNG
    else:
        digest = hashlib.blake2b(f"{stream}:{int(seed)}".encode(), digest_size=8).digest()
        generator.manual_seed(int.from_bytes(digest, "little") >> 1)  # manual_seed takes < 2**63 safely
    return generator


def sample_tokens(logits: Tensor, temperature: float = 1.0, top_p: float = 1.0,
                  generator: torch.Generator | None = None) -> Tensor:
    """logits (..., V) -> token ids (...). temperature 0 is argmax; top_p < 1 keeps the smallest set of
    tokens whose probability reaches top_p (Holtzman et al. 2020)."""
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # Keep a token if the mass before it is below top_p (so the first token is always kept).
        keep = (sorted_probs.cumsum(-1) - sorted_probs) < top_p
        sorted_probs = sorted_probs * keep
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])
