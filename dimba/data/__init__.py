"""Corpora, tokenizers and the Lightning data module."""
