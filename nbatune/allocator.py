"""Which memory allocator this process runs on, and the ``nbatune`` command on tcmalloc where it is installed.

Under glibc's malloc a training process grows over its steps: freed activation blocks come back in pieces that a
later, equally large batch cannot reuse, so the heap takes fresh pages (LoRA's 140 default steps: 2.2 GiB after 12
steps, 3.1 GiB after 140, the same batches). tcmalloc reuses them, and its steps were faster here too
(BENCHMARKS.md). An allocator has to be loaded before the process starts (``LD_PRELOAD``), so the console command
re-executes itself once with it (``relaunch``); a notebook kernel or a script that wants it sets ``LD_PRELOAD``
itself. ``NBATUNE_ALLOCATOR=system`` keeps the system's allocator.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

ENV = "NBATUNE_ALLOCATOR"  # "tcmalloc" (the default: used when found) or "system"
_RELAUNCHED = "NBATUNE_ALLOCATOR_RELAUNCHED"  # set on the re-executed process: never a second time
LIBRARIES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
LIBRARY_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib",
                "/usr/local/lib")
INSTALL_HINT = "apt-get install libtcmalloc-minimal4 (Debian/Ubuntu) or dnf install gperftools-libs"


def find_tcmalloc(dirs=LIBRARY_DIRS) -> str | None:
    """The path of an installed tcmalloc, or None."""
    for d in dirs:
        for name in LIBRARIES:
            path = Path(d) / name
            if path.is_file():
                return str(path)
    return None


def active(maps: str | None = None) -> str:
    """The allocator this process runs on: ``tcmalloc``, ``jemalloc`` or ``glibc`` (from the libraries it has
    mapped; ``unknown`` where that cannot be read)."""
    return _this_process() if maps is None else _named_in(maps)


@functools.cache
def _this_process() -> str:
    """Read once: a preloaded allocator is there from the start and never changes (``free_memory`` asks often)."""
    try:
        return _named_in(Path("/proc/self/maps").read_text())
    except OSError:
        return "unknown"


def _named_in(maps: str) -> str:
    for name in ("tcmalloc", "jemalloc"):
        if f"lib{name}" in maps:
            return name
    return "glibc"


def relaunch_env(environ: dict, library: str | None) -> dict | None:
    """The environment to re-execute this command with on ``library``, or None to run as it is: asked not to
    (``NBATUNE_ALLOCATOR=system``), already re-executed once, or no tcmalloc found."""
    choice = environ.get(ENV, "tcmalloc")
    if choice not in ("tcmalloc", "system"):
        raise ValueError(f"{ENV}={choice!r}: use 'tcmalloc' (the default) or 'system'")
    if choice == "system" or environ.get(_RELAUNCHED) or library is None:
        return None
    preload = environ.get("LD_PRELOAD")
    # tcmalloc prints every allocation above 1 GiB to stderr unless told otherwise; a big evaluation batch is not news
    quiet = {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(2**40)}
    return {**quiet, **environ, "LD_PRELOAD": f"{library}:{preload}" if preload else library, _RELAUNCHED: "1"}


def relaunch(argv: list[str]) -> None:
    """Re-execute ``python -m nbatune.cli argv`` on tcmalloc when it is installed and not yet loaded; returns
    only when the command should run as it is."""
    if active() != "glibc":
        return
    env = relaunch_env(dict(os.environ), find_tcmalloc())
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "nbatune.cli", *argv], env)


def advice() -> str:
    """A line for the run's log and report when training runs on glibc where tcmalloc would do better."""
    if active() != "glibc" or sys.platform != "linux" or os.environ.get(ENV) == "system":
        return ""
    return (f"training on glibc's malloc: slower steps and a heap that grows over them (over the default run's steps "
            f"it kept 0.5-1.1 GiB more than tcmalloc, which the memory estimates are for); install tcmalloc "
            f"({INSTALL_HINT}) and the nbatune command uses it")


def release_free_memory() -> None:
    """Hand tcmalloc's free pages back to the OS (glibc's are trimmed by ``measure.free_memory``), so a measured
    baseline holds none of an earlier phase's freed memory."""
    if active() != "tcmalloc":
        return
    import ctypes

    release = getattr(ctypes.CDLL(None), "MallocExtension_ReleaseFreeMemory", None)
    if release is not None:
        release()
