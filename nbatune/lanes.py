"""Models side by side on a CPU: each model's work (training, evaluation, its curve) in a process of its own,
the cores split between the processes ("lanes").

Why: much of a training step on a small model does not split across threads (the optimizer's elementwise
work, casts, norms, Python's dispatch of each operator). On a 2-core CPU one LoRA training process ran at
676 tokens/s with two threads and 478 with one; two one-thread processes, each pinned to its own core, ran
at 466 (LoRA) and 311 (full) tokens/s side by side (BENCHMARKS.md): the machine does about 1.4x the work.

A lane's process is fresh for every job (``python -m nbatune.lanes``, told what to run as JSON on its stdin:
a function's dotted name and a JSON spec, never a pickle, and never by re-running the caller's script as
multiprocessing's spawn does, which would start a pipeline script without a ``__main__`` guard again), so each
model's peak memory is its own and a crash in one loses nothing of the others: the job's result comes back as JSON.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)


def cores() -> list[int]:
    """The CPUs this process may run on."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def auto_lanes(setting: int, device: str, world_size: int, jobs: int) -> int:
    """How many lanes a run gets: ``setting`` when it is not 0; otherwise 2 on a CPU with at least 2 cores and at
    least 2 jobs, else 1 (a GPU runs one model at a time; under torchrun every process already trains)."""
    if device != "cpu" or world_size > 1 or jobs < 2:
        return 1
    lanes = setting or 2
    return max(1, min(lanes, jobs, len(cores())))


def core_sets(lanes: int) -> list[list[int]]:
    """The cores split into ``lanes`` contiguous groups, as even as they go."""
    cs = cores()
    k, r = divmod(len(cs), lanes)
    out, i = [], 0
    for lane in range(lanes):
        n = k + (lane < r)
        out.append(cs[i:i + n])
        i += n
    return out


_widen = {"flag": None, "cores": [], "at": None, "t0": 0.0}  # this lane's process: where to look, what to take


def widen() -> None:
    """In a lane's process: take every core of the run from here on, once the parent has said that no other
    model is left to run beside this one (a flag file). Called between a model's phases, never inside its
    training, whose tokens/s and MFU stay those of one lane; the answers do not depend on the thread count
    (the same 320 test answers from every model at one thread and at two, BENCHMARKS.md)."""
    flag = _widen["flag"]
    if flag is None or _widen["at"] is not None or not flag.exists():
        return
    import torch

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, _widen["cores"])
    torch.set_num_threads(len(_widen["cores"]))
    _widen["at"] = time.perf_counter() - _widen["t0"]
    log.info("the other lanes are done: this model continues on cores %s", _widen["cores"])


def widened_at() -> float | None:
    """Seconds into this lane's job when it took every core (``widen``); None if it never did."""
    return _widen["at"]


def _progress_bars_at(row: int | None, label: str) -> None:
    """Every progress bar of this process named after its job and, on a terminal, drawn on row ``row``, so that
    the lanes' bars stand one above the other instead of overwriting each other (``None``: no cursor moves, for
    output that ``_relay`` copies into a notebook)."""
    from tqdm import std

    init = std.tqdm.__init__

    def placed(self, *args, **kwargs):
        if row is not None:
            kwargs.setdefault("position", row)
        kwargs["desc"] = f"{label}: {kwargs['desc']}" if kwargs.get("desc") else label
        init(self, *args, **kwargs)

    std.tqdm.__init__ = placed


def _child(target: str, spec: dict, job: str, cpus: list[int], row: int | None, out: str,
           every: list[int]) -> None:
    import torch

    _widen.update(flag=Path(out).with_suffix(".widen"), cores=every, t0=time.perf_counter())

    if sys.platform == "linux":  # a lane does not outlive its run: killed with it, not left training alone
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus)
    torch.set_num_threads(len(cpus))
    logging.basicConfig(level=logging.INFO, format=f"%(levelname)s [{job}] %(name)s: %(message)s")
    _progress_bars_at(row, job)
    try:
        module, name = target.split(":")
        payload = getattr(importlib.import_module(module), name)(spec, job)
    except BaseException as e:  # noqa: BLE001 -- reported to the parent as this job's failure, never lost
        payload = {"lane_error": f"{type(e).__name__}: {e}"}
    tmp = Path(out).with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, default=str))
    tmp.replace(out)


def _stderr_fd() -> int | None:
    """The file descriptor behind ``sys.stderr``, or None where there is none (a notebook's cell output)."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return None


def _relay(stream) -> None:
    """A lane's stderr (its progress bars and log lines) copied into this process's ``sys.stderr``: in a notebook
    a child's own stderr would reach the kernel's log, not the cell."""
    for chunk in iter(lambda: stream.read1(4096), b""):
        sys.stderr.write(chunk.decode(errors="replace"))
        sys.stderr.flush()


def run(jobs: list[str], target: str, spec: dict, lanes: int, folder: Path) -> Iterator[tuple[str, dict]]:
    """Run ``target(spec, job)`` for every job, ``lanes`` at a time, each in a fresh process on its own cores;
    yield ``(job, result)`` as each finishes. ``target``: a function's ``"module:name"``, importable in a fresh
    process; ``spec``: JSON-able; the function returns a JSON-able dict. A job whose process dies or raises yields
    ``{"lane_error": ...}``. Ctrl-C reaches the children too (they save and report); the finished results
    are yielded before ``KeyboardInterrupt`` is raised again."""
    folder.mkdir(parents=True, exist_ok=True)
    todo, running, free = list(jobs), {}, list(range(lanes))
    sets = core_sets(lanes)

    def collect(lane: int) -> tuple[str, dict]:
        job, proc, out, copier = running.pop(lane)
        if copier is not None:
            copier.join(timeout=10)  # the lane's last output before its result
        free.append(lane)
        path = Path(out)
        path.with_suffix(".widen").unlink(missing_ok=True)
        if path.exists():
            payload = json.loads(path.read_text())
            path.unlink()
        else:
            payload = {"lane_error": f"its process ended with exit code {proc.returncode} before reporting "
                                     "(killed for memory?)"}
        return job, payload

    try:
        while todo or running:
            while todo and free:
                lane = min(free)
                free.remove(lane)
                job = todo.pop(0)
                out = str(folder / f"{job}.json")
                env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
                relay = _stderr_fd() is None
                proc = subprocess.Popen([sys.executable, "-m", "nbatune.lanes"], stdin=subprocess.PIPE, env=env,
                                        stderr=subprocess.PIPE if relay else None)
                copier = threading.Thread(target=_relay, args=(proc.stderr,), daemon=True) if relay else None
                if copier is not None:
                    copier.start()
                row = None if relay else lane
                proc.stdin.write(json.dumps([target, spec, job, sets[lane], row, out, cores()], default=str).encode())
                proc.stdin.close()
                log.info("=== %s: started in lane %d (cores %s) ===", job, lane, sets[lane])
                running[lane] = (job, proc, out, copier)
            if not todo and len(running) == 1:  # the last model: it may take the cores the others left
                flag = Path(next(iter(running.values()))[2]).with_suffix(".widen")
                if not flag.exists():
                    flag.touch()
            done = [lane for lane, (_, proc, _, _) in running.items() if proc.poll() is not None]
            if not done:
                time.sleep(0.2)
            for lane in done:
                yield collect(lane)
        folder.rmdir()  # every report read and removed: nothing of the lanes stays in the run's folder
    except KeyboardInterrupt:
        for lane in list(running):
            try:
                running[lane][1].wait(timeout=120)
            except subprocess.TimeoutExpired:
                running[lane][1].kill()
                running[lane][1].wait()
            yield collect(lane)
        raise


if __name__ == "__main__":
    from nbatune import lanes  # noqa: PLW0406 -- the module the job's code imports, not this __main__ copy

    lanes._child(*json.loads(sys.stdin.buffer.read()))
