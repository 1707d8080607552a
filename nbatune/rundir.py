"""The run folder: a new one per run (never two runs in one), or an interrupted one to resume after
checking that its saved config trains the same thing; its config.yaml and earlier results."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import yaml

from .config import PER_METHOD_FIELDS, RunConfig

# Fields that may change between an interrupted run and its resumption without changing what is trained.
RESUME_HARMLESS = ("enabled", "methods", "evaluate_base", "output_dir", "run_name", "eval.", "train.report_to",
                   "train.logging_steps", "train.save_steps")


def create(cfg: RunConfig, world_size: int = 1, resume: bool = False) -> Path:
    """A new folder under ``output_dir`` (``run_name``, or ``<mode>-<timestamp>`` made unique), or with
    ``resume`` the existing ``output_dir/run_name`` after ``check_resumable``.

    Raises:
        FileExistsError: ``run_name`` exists already. FileNotFoundError: nothing to resume there.
        OSError: ``output_dir`` is not writable. ValueError: several processes without ``run_name``.
    """
    root = Path(cfg.output_dir)
    if resume:
        if not cfg.run_name:
            raise ValueError("resume needs run_name: the folder of the interrupted run under output_dir")
        path = root / cfg.run_name
        if not (path / "config.yaml").is_file():
            raise FileNotFoundError(f"resume: no interrupted run in {path} (no config.yaml there)")
        check_resumable(cfg, yaml.safe_load((path / "config.yaml").read_text()))
        return path
    if world_size > 1 and not cfg.run_name:
        raise ValueError("run_name is required when several processes are launched, so that they share one "
                         "output folder (e.g. --set run_name=ddp-lora)")
    name = cfg.run_name or f"{cfg.mode}-{datetime.now():%Y%m%d-%H%M%S}"
    path = root / name
    if not cfg.run_name:  # a default name never collides: two runs in one second get -2, -3, ...
        n = 1
        while path.exists():
            n += 1
            path = root / f"{name}-{n}"
    try:
        path.mkdir(parents=True, exist_ok=world_size > 1)
    except FileExistsError:
        raise FileExistsError(f"output directory {path} already exists; choose another run_name or remove it") from None
    except OSError as e:
        raise OSError(f"output_dir: cannot create {path} ({e.strerror}); choose a writable output_dir") from e
    return path


def check_resumable(cfg: RunConfig, saved: dict) -> None:
    """Refuse to resume when the saved config differs on a field that changes what is trained.

    Raises:
        ValueError: naming every changed field with both values.
    """
    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) and k not in PER_METHOD_FIELDS
                       else {f"{prefix}{k}": v})
        return out

    now, before = flat(cfg.to_dict()), flat(saved)
    diffs = [f"{k}: saved {before.get(k)!r}, now {now.get(k)!r}" for k in sorted(set(now) | set(before))
             if now.get(k) != before.get(k) and not k.startswith(RESUME_HARMLESS)]
    if diffs:
        raise ValueError("cannot resume: the config changed what is trained:\n  - " + "\n  - ".join(diffs))


def write_config(run_dir: Path, cfg: RunConfig) -> None:
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def earlier_results(run_dir: Path) -> dict:
    """The results.json an interrupted run left (its finished techniques are kept), or {}."""
    path = run_dir / "results.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def finished(run_dir: str | Path) -> tuple[dict, RunConfig, dict[str, list[dict]]]:
    """A finished run's results.json, its config, and its data splits rebuilt as the run built them (the
    built-in dataset is deterministic in its config; user data is read again from ``data.source``)."""
    from .config import load_config
    from .data.loading import load_splits

    results = json.loads((Path(run_dir) / "results.json").read_text())
    cfg = load_config(results["config"])
    return results, cfg, load_splits(cfg.data, cfg.model)
