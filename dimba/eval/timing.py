"""Wall-clock timing with warm-up, device synchronisation and medians."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable

import torch


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def median_seconds(fn: Callable[[], object], device: torch.device | str = "cpu", warmup: int = 2,
                   repeats: int = 5) -> float:
    """Median wall time of fn() over `repeats` calls after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def machine_description(device: torch.device | str = "cpu") -> str:
    """One line naming the hardware and software a number was measured on."""
    if torch.device(device).type == "cuda":
        hw = torch.cuda.get_device_name()
    else:
        hw = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
    return f"{hw}; torch {torch.__version__}; Python {platform.python_version()}"
