"""Timing helpers shared by the benchmarks: interleaved calls with medians, medians of rounds, and
iterations from a budget. Torch is imported only to wait for a GPU (`synchronizer`): benchmarks that
never touch torch (decode, storage) use the rest without loading it."""
from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable

if TYPE_CHECKING:
    import torch


def synchronizer(device: torch.device | str) -> Callable[[], None]:
    """A function that waits for `device`'s queued work (a no-op on the CPU)."""
    import torch

    if torch.device(device).type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def interleaved_times(fns: dict[str, Callable[[], Any]], iters: int, warmup: int = 1,
                      sync: Callable[[], None] = lambda: None) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Seconds of every timed call of each fn, calls interleaved (a, b, a, b, ...) so that a slow spell of
    the machine hits all alike; and each fn's last output. `sync` waits for queued device work."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    outs: dict[str, Any] = {}
    for i in range(warmup + max(iters, 1)):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            outs[name] = fn()
            sync()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return times, outs


def timed_interleaved(fns: dict[str, Callable[[], Any]], iters: int, warmup: int = 1,
                      sync: Callable[[], None] = lambda: None) -> tuple[dict[str, float], dict[str, Any]]:
    """Median seconds per call of each fn (`interleaved_times`), and each fn's last output."""
    times, outs = interleaved_times(fns, iters, warmup, sync)
    return {k: statistics.median(v) for k, v in times.items()}, outs


def medians(rounds: list[dict[str, float]], keys: Iterable[str] | None = None) -> dict[str, float]:
    """The median of each key (`keys`, or the first round's) over rounds of measurements: a round runs
    every variant once, in turn, and its median is robust to the odd slow round of a shared machine."""
    return {k: statistics.median(r[k] for r in rounds) for k in (rounds[0] if keys is None else keys)}


def iterations(seconds_per_round: float, seconds: float, lo: int = 2, hi: int = 20) -> int:
    """How many rounds of `seconds_per_round` fit in `seconds`, clamped to [lo, hi]."""
    if seconds_per_round <= 0:
        return hi
    return max(lo, min(hi, int(seconds / seconds_per_round)))
