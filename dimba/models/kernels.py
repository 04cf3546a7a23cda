"""Optional CUDA kernels (mamba-ssm, causal-conv1d), probed once and lazily.

Nothing here imports a CUDA-only package at module import time, so `import dimba` works on any machine.
"""

from __future__ import annotations

import functools
import logging
from types import SimpleNamespace

log = logging.getLogger(__name__)


_UNPROBED = object()
_kernels: SimpleNamespace | None | object = _UNPROBED


def mamba_kernels() -> SimpleNamespace | None:
    """mamba-ssm's Triton SSD kernels and, when installed, causal-conv1d's; None if mamba-ssm is absent.

    Returns a namespace with `chunk_scan` (mamba_chunk_scan_combined), `split_conv1d_scan` (the fused
    path) and `causal_conv1d_fn` (None without causal-conv1d, in which case only the unfused path runs).
    Probed on the first call and kept in a module global rather than a functools cache: torch.compile
    traces through cache wrappers, and a traced failed import breaks the graph at every mixer.
    """
    global _kernels
    if _kernels is _UNPROBED:
        _kernels = _probe_kernels()
    return _kernels


def _probe_kernels() -> SimpleNamespace | None:
    try:
        from mamba_ssm.ops.triton.ssd_combined import (
            mamba_chunk_scan_combined,
            mamba_split_conv1d_scan_combined,
        )
    except Exception as err:  # ImportError, or a missing compiled module raising something else
        log.debug("mamba-ssm kernels unavailable: %s", err)
        return None
    try:
        from causal_conv1d import causal_conv1d_fn
    except Exception:
        causal_conv1d_fn = None
    return SimpleNamespace(
        chunk_scan=mamba_chunk_scan_combined,
        split_conv1d_scan=mamba_split_conv1d_scan_combined,
        causal_conv1d_fn=causal_conv1d_fn,
    )


@functools.cache
def announce_impl(choice: str, reason: str) -> None:
    """Log, once per (choice, reason), which Mamba-2 path `impl="auto"` picked."""
    log.info("Mamba-2: using the %s path (%s)", choice, reason)
