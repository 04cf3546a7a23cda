"""DIMBA: non-autoregressive text generation by Gaussian diffusion over token embeddings, with a
bidirectional Mamba-2 denoiser.

    import dimba
    model = dimba.load("runs/base/checkpoints/last.ckpt")   # a checkpoint or an export folder, any model kind
    print(model.complete(["ROMEO:"], length=64, steps=32))

Layers (lower never import higher; tests/test_layers.py checks it): `errors`, `config`, `precision`,
`sampling`, `outputs` (shared by all) < `models` (networks), `diffusion` (schedules, samplers, losses), `data` <
`training` (LightningModules, callbacks, checkpoints) < `eval` < `cli` (the `dimba` verbs).
"""

from __future__ import annotations

from dimba.config import config_path  # noqa: F401  (the shipped configs: dimba.config_path("base.yaml"))

__version__ = "0.3.0"


def load(path, device=None):
    """The model of a checkpoint written by `dimba fit` or of a folder written by `dimba export` (DIMBA, the
    AR baseline or any other kind), in eval mode on `device` (default: CUDA when available), with its
    tokenizer: call `.complete(prompts, length=..., **sampling)` on it."""
    from dimba.training.checkpoint import load_for_inference

    return load_for_inference(path, device)
