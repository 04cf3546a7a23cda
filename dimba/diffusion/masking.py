"""Discrete corruption: which tokens are hidden at time t, and which a sampler reveals at each step.

The masking schedule is MDLM's log-linear one (Sahoo et al. 2024): a token is still clean at time t with
probability alpha_t = 1 - t. Its negative ELBO weighs the cross-entropy of each hidden token by
-alpha'_t / (1 - alpha_t) = 1 / t (MDLM, eq. 10). A reverse step from t to s < t reveals each hidden token
with probability (alpha_s - alpha_t) / (1 - alpha_t) = (t - s) / t; the samplers here reveal exactly that share
of the hidden tokens (rounded), at random positions or the most confident first (Kim et al. 2025).
"""

from __future__ import annotations

import torch
from torch import Tensor

from dimba.sampling import ExampleStreams, sample_tokens

T_MIN = 1e-3  # no training example at t = 0 exactly (nothing hidden, weight 1/t infinite)


def stratified_times(batch: int, device: torch.device | str = "cpu") -> Tensor:
    """(B,) training times in [T_MIN, 1]: one uniform offset, evenly spread over the batch (MDLM's
    low-discrepancy sampler: the same expectation as independent draws, less variance in the ELBO)."""
    u = (torch.rand((), device=device) + torch.arange(batch, device=device) / batch) % 1.0
    return T_MIN + (1 - T_MIN) * u


def hide(generated: Tensor, t: Tensor, uniforms: Tensor | None = None) -> Tensor:
    """(B, L) bool: each generated position is hidden with probability t (B,); prompt positions never are."""
    u = torch.rand(generated.shape, device=generated.device) if uniforms is None else uniforms
    return generated & (u < t[:, None])


def hidden_after(n_generated: Tensor, s: float) -> Tensor:
    """How many of each example's n_generated (B,) tokens are still hidden at time s (the schedule's
    expectation, rounded)."""
    return torch.round(n_generated * s).long()


def choose_reveals(hidden: Tensor, count: Tensor, confidence: Tensor | None, streams: ExampleStreams | None
                   ) -> Tensor:
    """(B, L) bool: `count` (B,) of the hidden positions of each example to reveal now.

    confidence: (B, L) scores, the highest revealed first; None: uniformly at random (from each example's stream).
    """
    scores = streams.rand(hidden.shape[1]).to(hidden.device) if confidence is None else confidence.float()
    scores = scores.masked_fill(~hidden, float("-inf"))
    order = scores.argsort(dim=1, descending=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(hidden.shape[1], device=hidden.device)
                                            .expand_as(order).contiguous())
    return hidden & (rank < count[:, None])


class CommitStep:
    """One reverse step of a committing sampler (masked diffusion, the hybrid) from t to s < t: draw a token for
    every position from the logits (at `temperature`, with nucleus `top_p`), then reveal a (t - s)/t share of each
    example's hidden positions, random ones or the most confident first (`reveal`).

    Stateless: the loop around it holds the tokens, the hidden mask and each example's generated count.
    """

    def __init__(self, reveal: str, temperature: float, top_p: float):
        if reveal not in ("random", "confidence"):
            raise ValueError(f"reveal must be 'random' or 'confidence', got {reveal!r}")
        self.reveal, self.temperature, self.top_p = reveal, temperature, top_p

    @staticmethod
    def count(hidden: Tensor, n_generated: Tensor, s: float) -> Tensor:
        """(B,) how many hidden positions (B, L) the step to s reveals: down to the schedule's share at s."""
        return (hidden.sum(1) - hidden_after(n_generated, s)).clamp(min=0)

    def step(self, tokens: Tensor, hidden: Tensor, count: Tensor, logits: Tensor, streams: ExampleStreams
             ) -> tuple[Tensor, Tensor]:
        """tokens, hidden (B, L), count (B,), logits (B, L, V) -> (tokens with the revealed positions drawn,
        hidden after the step)."""
        draws = sample_tokens(logits, self.temperature, self.top_p, streams)
        confidence = torch.softmax(logits, dim=-1).amax(-1) if self.reveal == "confidence" else None
        reveal = choose_reveals(hidden, count, confidence, streams)
        return torch.where(reveal, draws, tokens), hidden & ~reveal


def teacher_first_step(logits: Tensor, hidden: Tensor, n_generated: Tensor, s: float) -> tuple[Tensor, Tensor]:
    """The first of a teacher's two steps in self-distillation (`dimba.training.distill`): (a token drawn at every
    position from logits (B, L, V) at temperature 1, the positions (B, L) the step to s reveals, at random), both
    from the global RNG: a training stream, not the per-example sampling streams."""
    draws = torch.multinomial(torch.softmax(logits.flatten(0, 1).float(), -1), 1).view(hidden.shape)
    order = torch.rand(hidden.shape, device=hidden.device)  # a random reveal order, as scores
    return draws, choose_reveals(hidden, CommitStep.count(hidden, n_generated, s), order, None)
