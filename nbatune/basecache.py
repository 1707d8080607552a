"""The base model's evaluation, kept between runs.

Every figure of the base phase (its test and retention answers, the curve's origin on validation, the few-shot
baseline, the NF4 error) is a function of the base's files, the evaluation data, the evaluation settings, the
code that scores them and the machine's arithmetic; training changes none of them. A team re-running the
comparison with another technique, rate or step count would pay the same 1.5-2 minutes each time, so the first
run stores the base's result under a key made of all of those, and a later run with the same key reads it
(lm-evaluation-harness's ``--use_cache`` does the same for model requests). The run's results say where the base's
figures came from (``base.reused_from``); ``eval.reuse_base: false`` measures them again.

What the key holds: every source file of the ``nbatune`` package (any code change re-measures), the model's
files, the model / evaluation / quantization config, every record the base phase reads, the techniques' need
for an NF4 error, the software versions and the machine's matmul features and thread count (bf16 results round
differently on AMX and AVX512-BF16 kernels)."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

from .modeling import default_cache_dir, files_digest

log = logging.getLogger(__name__)
VERSION = 2  # what an entry holds; a change to it makes earlier entries unreadable by design (2: the base's
# validation point holds which general questions it answers right)


def source_digest() -> str:
    """The bytes of every file in the ``nbatune`` package (code and its package data)."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix in (".py", ".json", ".yaml", ".txt") and "__pycache__" not in p.parts:
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def key(model_path: str, inputs: dict, machine: dict) -> str | None:
    """The cache key of one base evaluation: ``inputs`` is everything the base phase reads (configs and
    records, JSON-able), ``machine`` the software and hardware that do its arithmetic. None for a model that is
    not a local folder (a hub id): its weights cannot be read here, and a new revision would keep the id."""
    if not Path(model_path).is_dir():
        return None
    h = hashlib.sha256()
    for part in (str(VERSION), source_digest(), files_digest(model_path),
                 json.dumps(inputs, sort_keys=True, default=str), json.dumps(machine, sort_keys=True, default=str)):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


def path_for(k: str) -> Path:
    return default_cache_dir() / "base-results" / f"{k}.json"


def load(k: str) -> dict | None:
    """The stored entry for key ``k`` ({"base", "nf4_error", "phases", "run_dir", "written"}), or None when there is
    none or it cannot be read (then the base is measured again)."""
    path = path_for(k)
    if not path.is_file():
        return None
    try:
        entry = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        log.warning("base results cache %s unreadable (%s): measuring the base again", path, e)
        return None
    if entry.get("version") != VERSION or entry.get("key") != k or not isinstance(entry.get("base"), dict):
        log.warning("base results cache %s does not match its key: measuring the base again", path)
        return None
    return entry


def store(k: str, base: dict, nf4_error: dict | None, phases: dict, run_dir: str) -> Path:
    """Keep one finished base evaluation under ``k`` (written whole or not at all)."""
    from .results import write_json_atomic

    path = path_for(k)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"version": VERSION, "key": k, "base": base, "nf4_error": nf4_error, "phases": phases,
                             "run_dir": run_dir, "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return path
