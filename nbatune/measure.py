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

from . import allocator


class PeakMemory:
    """Peak memory while the block runs, in bytes above the level when it started.

    CUDA: ``torch.cuda.max_memory_allocated`` (reset at entry). CPU: process RSS sampled every
    ``interval`` seconds by a background thread, so a very short spike can be missed.
    """

    def __init__(self, device: str, interval: float = 0.02):
        self.device, self.interval = device, interval
        self.peak_bytes = 0
        self.baseline_bytes = 0
        self._paused_max = 0  # CUDA: the peak before a pause (the counter is reset after it)
        self._lock = threading.Lock()
        self._paused = False

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
            with self._lock:
                if not self._paused:
                    self._max = max(self._max, self._proc.memory_info().rss)
            time.sleep(self.interval)

    @contextlib.contextmanager
    def paused(self):
        """Leave a block out of the peak: a measurement taken in the middle of training (the learning curve)
        is not training memory. What the block freed is handed back before counting resumes, so later
        samples do not carry it either."""
        if self.device == "cuda":
            self._paused_max = max(self._paused_max, torch.cuda.max_memory_allocated())
            try:
                yield
            finally:
                free_memory()
                torch.cuda.reset_peak_memory_stats()
            return
        with self._lock:
            self._max = max(self._max, self._proc.memory_info().rss)
            self._paused = True
        try:
            yield
        finally:
            free_memory()
            with self._lock:
                self._paused = False

    def __exit__(self, *exc):
        if self.device == "cuda":
            self.peak_bytes = max(self._paused_max, torch.cuda.max_memory_allocated()) - self.baseline_bytes
        else:
            self._stop.set()
            self._thread.join()
            if not self._paused:
                self._max = max(self._max, self._proc.memory_info().rss)
            self.peak_bytes = self._max - self.baseline_bytes
        return False


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    _malloc_trim()
    allocator.release_free_memory()


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
    if libc is None or allocator.active() != "glibc":  # tcmalloc keeps freed pages itself
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


def cpu_matmul_features() -> list[str]:
    """The CPU's matrix-relevant instruction sets, from /proc/cpuinfo (empty where it cannot be read). AMX machines
    and AVX512-BF16-only machines of the same size differ by 4x in bf16 matmul peak and run our steps at different
    speeds, so every timing names which it came from."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    return [f for f in ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2") if f in flags]


def cpu_kind(features: list[str]) -> str:
    """The CPU's matmul kind from ``cpu_matmul_features()``: AMX, AVX512-BF16, AVX512, AVX2 or unknown."""
    return next((k for f, k in (("amx_bf16", "AMX"), ("avx512_bf16", "AVX512-BF16"), ("avx512f", "AVX512"),
                                ("avx2", "AVX2")) if f in features), "unknown")


def matmul_peak(dtype: torch.dtype, device: str, reps: int = 10, n: int | None = None) -> float:
    """Measured matmul FLOP/s in ``dtype`` on ``device``: a square product (8192 on CUDA, 2048 on CPU unless ``n``
    says), after three warm-ups, averaged over ``reps``. The denominator of MFU, measured in the same process as the
    run."""
    n = n or (8192 if device == "cuda" else 2048)
    a, b = (torch.randn(n, n, dtype=dtype, device=device) for _ in range(2))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    return 2 * n**3 * reps / (time.perf_counter() - t)


# Below this a dtype's matmul is emulated in software: bf16 on a CPU without AVX512-BF16 or AMX ran at 0.3 GFLOP/s
# on a 2-core AVX2 EPYC (2026-12-06), where thirteen 2048-wide products take twelve minutes; any hardware path is
# tens of GFLOP/s or more even at 256 on one core.
EMULATED_FLOPS = 5e9


def machine_peak(device: str) -> dict:
    """What this machine's matmuls can do, measured now: instruction sets (CPU), bf16 and fp32 FLOP/s. A dtype the
    CPU emulates is measured at 256 wide (a second) and listed under ``emulated``: nothing runs in it unless asked."""
    features = cpu_matmul_features() if device == "cpu" else []
    kind = torch.cuda.get_device_name(0) if device == "cuda" else cpu_kind(features)
    out = {"kind": kind, "features": features,
           "threads": torch.get_num_threads()}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        small = matmul_peak(dtype, device, reps=1, n=256) if device == "cpu" else None
        if small is not None and small < EMULATED_FLOPS:
            out[f"{name}_flops"] = small
            out.setdefault("emulated", []).append(name)
        else:
            out[f"{name}_flops"] = matmul_peak(dtype, device)
    return out


def train_flops_per_token(params: int, embedding_params: int, whole: bool) -> float:
    """Training FLOPs per token: 2N forward and 4N backward for a whole model, 2N backward (activations only,
    frozen weights get no weight gradient) for an adapter technique; N the parameters every token's matmuls
    pass (all but the embedding: a lookup, and as the tied head it runs on answer tokens only). Attention's own
    products are not counted. The same convention as bench/bench.py."""
    return (6 if whole else 4) * (params - embedding_params)
