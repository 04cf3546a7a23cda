"""DIMBA: non-autoregressive text generation by Gaussian diffusion over token embeddings, with a
bidirectional Mamba-2 denoiser."""

__version__ = "0.1.0"
