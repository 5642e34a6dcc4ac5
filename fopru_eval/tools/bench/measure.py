"""Measuring on a shared machine: wall-clock time (synchronised on CUDA), peak memory, and the cost of significance
hooks as a share of a vision tower's time, in interleaved rounds."""

from __future__ import annotations

import argparse
import ctypes
import gc
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import psutil
import torch

try:
    _LIBC = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc: RSS is read as the allocator leaves it
    _LIBC = None


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Wall-clock seconds of ``fn()`` and its result; on CUDA, queued kernels are waited for at both ends."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, result


class PeakMemory:
    """Peak memory a block adds: CUDA's allocator peak, or on CPU the peak RSS above the RSS before the block.

    ``ru_maxrss`` only ever grows over the life of the process, so on CPU a thread samples RSS every ~1 ms.
    Use it inside ``rss_follows_tensors`` so that freed tensors leave the RSS.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.bytes = 0

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return self
        if _LIBC is not None:
            _LIBC.malloc_trim(0)
        self.process = psutil.Process()
        self.base = self.peak = self.process.memory_info().rss
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.stop.wait(0.001):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __exit__(self, *exc_info: object) -> None:
        if self.device.type == "cuda":
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self.base
            return
        self.stop.set()
        self.thread.join()
        self.bytes = max(self.peak, self.process.memory_info().rss) - self.base


@contextmanager
def rss_follows_tensors() -> Iterator[None]:
    """While active, glibc gives each large block its own mapping, returned to the OS when freed.

    By default glibc's mmap threshold grows with every large free (up to 32 MiB), so after a warm-up tensors
    reuse heap the process already holds and RSS barely moves. A fixed 128 KiB threshold makes RSS follow the
    live tensors, but it slows CPU inference by a third, so on exit the threshold goes to the 32 MiB a warm
    process reaches anyway, for timing. Measure memory first: a heap fragmented by earlier runs hides it.
    """
    m_trim_threshold, m_mmap_threshold = -1, -3
    if _LIBC is None:
        yield
        return
    _LIBC.mallopt(m_mmap_threshold, 128 * 2**10)
    try:
        yield
    finally:
        _LIBC.mallopt(m_mmap_threshold, 32 * 2**20)
        _LIBC.mallopt(m_trim_threshold, 64 * 2**20)


def capture_overhead(
    forward: Callable[[], Any],
    capture: Callable[..., Any],
    images: int,
    device: torch.device,
    args: argparse.Namespace,
) -> dict[str, float]:
    """A vision tower's forward without the significance hooks, with them, and the seconds spent inside them; medians
    over interleaved rounds. ``capture(timed=False)`` makes a family's significance capture, not yet entered.

    ``share`` (time inside the hooks / the tower's time) is the figure to read: the difference of the two forwards
    says the same, but a 1% effect drowns in the few percent two long passes differ by on a shared machine. The order
    of the two forwards flips every round, since whichever runs second tends to find warmer caches and allocator.
    """
    seconds: dict[str, list[float]] = {"without": [], "with": [], "inside": []}
    for round_index in range(args.warmup + args.repeats):
        for name in ("with", "without") if round_index % 2 else ("without", "with"):
            with capture() if name == "with" else nullcontext(), torch.inference_mode():
                elapsed, _ = timed(forward, device)
            if round_index >= args.warmup:
                seconds[name].append(elapsed)
        # A pass of its own, as the timing inside the hooks waits for the GPU at both ends.
        with capture(timed=True) as timed_capture, torch.inference_mode():
            forward()
        if round_index >= args.warmup:
            seconds["inside"].append(sum(timed_capture.reduction_seconds))
    without_s, with_s, inside_s = (statistics.median(seconds[name]) for name in ("without", "with", "inside"))
    return {
        "images": images,
        "tower_s": without_s,
        "significance_s": inside_s,
        "share": inside_s / without_s,
        "tower_with_significance_s": with_s,
        "overhead": (with_s - without_s) / without_s,
    }


class LayerTimer:
    """Seconds spent inside some modules (an LLM's decoder layers) while active, from forward hooks on each.

    On CUDA each hook waits for queued kernels, which slows the pass a little; the benchmark times layers this way only
    to scale a slice of an LLM up to its full depth, which is a CPU measurement.
    """

    def __init__(self, modules: torch.nn.ModuleList, device: torch.device) -> None:
        self.modules, self.device = modules, device
        self.seconds = 0.0

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def __enter__(self) -> LayerTimer:
        self.seconds, starts = 0.0, []

        def start(*_: Any) -> None:
            starts.append(self._now())

        def stop(*_: Any) -> None:
            self.seconds += self._now() - starts.pop()

        self.handles = [
            h for m in self.modules for h in (m.register_forward_pre_hook(start), m.register_forward_hook(stop))
        ]
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self.handles:
            handle.remove()
