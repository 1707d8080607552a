"""Memory and disk measurements, the same rules for every method."""

from __future__ import annotations

import contextlib
import gc
import os
import threading
import time
from pathlib import Path

import psutil
import torch


class PeakMemory:
    """Peak memory while the block runs, in bytes above the level when it started.

    CUDA: ``torch.cuda.max_memory_allocated`` (reset at entry). CPU: process RSS sampled every
    ``interval`` seconds by a background thread, so a very short spike can be missed.
    """

    def __init__(self, device: str, interval: float = 0.02):
        self.device, self.interval = device, interval
        self.peak_bytes = 0
        self.baseline_bytes = 0

    def __enter__(self):
        free_memory()
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            self.baseline_bytes = torch.cuda.memory_allocated()
        else:
            self._proc = psutil.Process(os.getpid())
            self.baseline_bytes = self._proc.memory_info().rss
            self._max = self.baseline_bytes
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self._max = max(self._max, self._proc.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc):
        if self.device == "cuda":
            self.peak_bytes = torch.cuda.max_memory_allocated() - self.baseline_bytes
        else:
            self._stop.set()
            self._thread.join()
            self._max = max(self._max, self._proc.memory_info().rss)
            self.peak_bytes = self._max - self.baseline_bytes
        return False


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    _malloc_trim()


def _malloc_trim() -> None:
    """Give freed heap pages back to the OS (glibc keeps them otherwise), so that the next method's
    RSS baseline does not contain memory it can silently reuse, which would hide part of its peak."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def _glibc():
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameters (malloc.h)
GLIBC_DEFAULTS = {M_TRIM_THRESHOLD: 128 * 1024, M_MMAP_MAX: 65536}


@contextlib.contextmanager
def reuse_freed_memory():
    """Keep memory freed during a run in the process heap for the next request.

    By default glibc hands every block above its mmap threshold (at most 32 MiB) back to the OS when it
    is freed, and trims the heap's top. Training frees and asks again for the same large blocks at every
    step (the 49,152 x 576 embedding gradient, the weights' bf16 casts), so each step page-faults them in
    afresh: 82 ms a step for the embedding gradient's zero fill alone. Measured A-B-B-A in one process (2
    cores, 16 steps of 3): full fine-tuning 6% faster a step, LoRA and QLoRA unchanged; the same answers,
    peaks within 4%. ``PeakMemory`` still trims the heap
    before each method, so a method's baseline holds none of the previous one's memory. glibc's defaults
    are set back afterwards (its adaptive thresholds stay off); without glibc this does nothing."""
    libc = _glibc()
    if libc is None:
        yield
        return
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
    try:
        yield
    finally:
        for param, value in GLIBC_DEFAULTS.items():
            libc.mallopt(param, value)
        libc.malloc_trim(0)


def dir_size(path: str | Path) -> int:
    p = Path(path)
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.exists() else 0


def weights_bytes(model) -> int:
    """Bytes held by parameters and buffers (a 4-bit weight counts its packed storage)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total
