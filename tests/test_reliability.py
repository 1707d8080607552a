"""Faults: a killed process, a corrupt checkpoint, a changed config, Ctrl-C, malicious pickles."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import kill_when, slow_child, tiny_config
from nbatune.compare import Comparison
from nbatune.training import CheckpointError, latest_checkpoint

ROOT = Path(__file__).parent.parent


def _cfg(model_dir, tmp_path, **over):
    base = {"methods": ["lora"], "evaluate_base": False, "run_name": "r", "train.max_steps": 8,
            "train.save_steps": 2, "train.lr_scheduler": "linear"}
    return tiny_config(model_dir, tmp_path, **{**base, **over})


def _final_adapter(res) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(res["lora"]["saved_path"]) / "adapter_model.safetensors"))


def test_a_killed_run_resumes_to_the_same_result_as_an_uninterrupted_one(tiny_model_dir, tmp_path):
    straight = Comparison(_cfg(tiny_model_dir, tmp_path / "a")).execute()

    cfg = _cfg(tiny_model_dir, tmp_path / "b")
    proc = slow_child(cfg, tmp_path, delay=0.4)
    ckpt_dir = Path(cfg["output_dir"]) / "r" / "lora" / "checkpoints"
    kill_when(proc, (ckpt_dir / "checkpoint-4").is_dir)  # a real kill, mid-run: no handler runs
    assert (ckpt_dir / "checkpoint-4").is_dir(), proc.stderr.read().decode()[-2000:]
    assert not (ckpt_dir / "checkpoint-8").exists()

    resumed = Comparison(cfg).execute(resume=True)
    assert resumed["lora"]["status"] == "ok"
    steps = [s for s, _ in resumed["lora"]["loss_curve"]]
    assert steps == list(range(1, 9))
    losses = [[loss for _, loss in r["lora"]["loss_curve"]] for r in (straight, resumed)]
    assert losses[1][4:] == pytest.approx(losses[0][4:], abs=1e-5)  # steps 5-8 ran after the kill
    a, b = _final_adapter(straight), _final_adapter(resumed)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_resume_skips_methods_that_already_finished(tiny_model_dir, tmp_path):
    cfg = _cfg(tiny_model_dir, tmp_path, methods=["lora", "qlora"], **{"train.save_steps": 0, "train.max_steps": 2})
    first = Comparison({**cfg, "methods": ["lora"]}).execute()
    again = Comparison(cfg).execute(resume=True)
    assert again["lora"]["train_seconds"] == first["lora"]["train_seconds"]  # kept, not retrained
    assert again["qlora"]["status"] == "ok"


def test_resume_refuses_a_config_that_changes_what_is_trained(tiny_model_dir, tmp_path):
    cfg = _cfg(tiny_model_dir, tmp_path, **{"train.max_steps": 2, "train.save_steps": 0})
    Comparison(cfg).execute()
    changed = {**cfg, "lora": {"r": 8}, "seed": 7}
    with pytest.raises(ValueError) as e:
        Comparison(changed).execute(resume=True)
    assert "lora.r: saved 16, now 8" in str(e.value) and "seed: saved 0, now 7" in str(e.value)
    Comparison({**cfg, "eval": {"max_new_tokens": 4}}).setup(resume=True)  # harmless fields are fine


def test_resume_without_a_checkpoint_names_the_folder(tiny_model_dir, tmp_path):
    from nbatune.training import train

    cmp = Comparison(_cfg(tiny_model_dir, tmp_path)).setup()
    from nbatune.modeling import load_model

    model = load_model(cmp.model_path, "lora", cmp.cfg.model, cmp.rt, cmp.cfg.lora, cmp.cfg.quant, 0)
    with pytest.raises(CheckpointError, match=f"no complete checkpoint in {tmp_path}"):
        train(model, cmp.tokenizer, cmp.train_rows, "lora", cmp.cfg.train, cmp.rt, tmp_path / "nothing", 0,
              resume=True)


def test_resume_with_no_interrupted_run_is_clear(tiny_model_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no interrupted run in"):
        Comparison(_cfg(tiny_model_dir, tmp_path, run_name="never")).setup(resume=True)


def test_a_truncated_checkpoint_is_named_and_an_earlier_one_suggested(tiny_model_dir, tmp_path):
    cfg = _cfg(tiny_model_dir, tmp_path)
    proc = slow_child(cfg, tmp_path, delay=0.4)
    ckpt_dir = Path(cfg["output_dir"]) / "r" / "lora" / "checkpoints"
    kill_when(proc, (ckpt_dir / "checkpoint-4").is_dir)
    weights = ckpt_dir / "checkpoint-4" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    res = Comparison(cfg).execute(resume=True)
    assert res["lora"]["status"] == "failed"
    assert "checkpoint-4" in res["lora"]["error"] and "resume from checkpoint-2" in res["lora"]["error"]


def test_a_crash_while_writing_a_checkpoint_keeps_the_previous_one(tiny_model_dir, tmp_path, monkeypatch):
    from transformers import Trainer

    calls = {"n": 0}
    real = Trainer._save_rng_state

    def failing(self, output_dir):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint fails half-way through
            raise OSError(28, "No space left on device")
        return real(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_rng_state", failing)
    res = Comparison(_cfg(tiny_model_dir, tmp_path)).execute()
    assert res["lora"]["status"] == "failed" and "No space left" in res["lora"]["error"]
    ckpt_dir = Path(res["run_dir"]) / "lora" / "checkpoints"
    assert latest_checkpoint(ckpt_dir).name == "checkpoint-2"
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["checkpoint-2"]  # no half-written folder left


def test_ctrl_c_saves_a_checkpoint_and_partial_results_then_resumes(tiny_model_dir, tmp_path):
    cfg = _cfg(tiny_model_dir, tmp_path, methods=["lora", "qlora"], **{"train.save_steps": 0})
    steps = tmp_path / "steps.txt"
    proc = slow_child(cfg, tmp_path, delay=0.4, steps_file=steps)
    run = Path(cfg["output_dir"]) / "r"
    # LoRA takes 8 steps; interrupt once QLoRA has finished two
    kill_when(proc, lambda: steps.is_file() and len(steps.read_text().splitlines()) >= 10, 180, signal.SIGINT)
    assert proc.returncode != 0
    saved = json.loads((run / "results.json").read_text())
    assert saved["lora"]["status"] == "ok" and saved["qlora"]["status"] == "interrupted"
    assert latest_checkpoint(run / "qlora" / "checkpoints") is not None
    res = Comparison(cfg).execute(resume=True)
    assert res["qlora"]["status"] == "ok" and [s for s, _ in res["qlora"]["loss_curve"]][-1] == 8


def test_ctrl_c_in_the_cli_exits_130_and_run_resume_finishes_it(tiny_model_dir, tmp_path, capsys):
    import yaml

    from nbatune.cli import main

    cfg = _cfg(tiny_model_dir, tmp_path, **{"train.save_steps": 0, "eval.retention": False})
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    steps = tmp_path / "steps.txt"
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "slow_child.py"), "--cli", "0.4", str(steps), "run",
                             "--config", str(cfg_file)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    kill_when(proc, lambda: steps.is_file() and len(steps.read_text().splitlines()) >= 3, 180, signal.SIGINT)
    err = proc.stderr.read().decode()
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted: interrupted during lora; resume with" in err
    run = Path(cfg["output_dir"]) / "r"
    assert json.loads((run / "results.json").read_text())["lora"]["status"] == "interrupted"
    done = latest_checkpoint(run / "lora" / "checkpoints")
    # three training_step calls had returned; the third's optimizer step may not have: step 2 or 3 reached
    assert done is not None and int(done.name.split("-")[1]) >= 2

    assert main(["run", "--config", str(cfg_file), "--resume"]) == 0
    res = json.loads((run / "results.json").read_text())
    steps = [s for s, _ in res["lora"]["loss_curve"]]
    # every step before the checkpoint and after it is logged; the step the interrupt landed in may not be
    # (the Trainer logs after the optimizer step, and the checkpoint is of the step reached)
    reached = int(done.name.split("-")[1])
    assert res["lora"]["status"] == "ok" and steps == sorted(set(steps)) and steps[-1] == 8
    assert set(range(1, reached)) | set(range(reached + 1, 9)) <= set(steps)
    assert "results: " in capsys.readouterr().out


class _Evil:
    def __reduce__(self):  # the tests set EVIL_SENTINEL to a file in their own tmp_path
        return (os.system, (f"touch {os.environ['EVIL_SENTINEL']}",))


def _resumable_run(model_dir, tmp_path) -> tuple[dict, Path]:
    """A finished 4-step LoRA run turned into one interrupted after step 2: resume must read checkpoint-2."""
    cfg = _cfg(model_dir, tmp_path, **{"train.max_steps": 4, "eval.retention": False})
    Comparison(cfg).execute()
    ckpts = Path(cfg["output_dir"]) / "r" / "lora" / "checkpoints"
    (ckpts / "checkpoint-4").rename(tmp_path / "moved")
    results = Path(cfg["output_dir"]) / "r" / "results.json"
    saved = json.loads(results.read_text())
    saved["lora"]["status"] = "interrupted"
    results.write_text(json.dumps(saved))
    return cfg, ckpts / "checkpoint-2"


def test_a_checkpoint_pickles_only_torch_state_and_writes_its_arguments_as_json(tiny_model_dir, tmp_path):
    from nbatune.training import PICKLED_CHECKPOINT_FILES

    _, ckpt = _resumable_run(tiny_model_dir, tmp_path)
    names = {p.name for p in ckpt.iterdir()}
    assert {n for n in names if n.endswith((".pt", ".pth", ".bin", ".pkl"))} == set(PICKLED_CHECKPOINT_FILES)
    assert {"adapter_model.safetensors", "training_args.json", "trainer_state.json"} <= names
    assert json.loads((ckpt / "training_args.json").read_text())["max_steps"] == 4


def test_resume_reads_every_pickled_file_with_weights_only(tiny_model_dir, tmp_path, monkeypatch):
    """The package itself never calls torch.load; the Trainer does on resume. Record each call."""
    from nbatune.training import PICKLED_CHECKPOINT_FILES

    cfg, _ = _resumable_run(tiny_model_dir, tmp_path)
    calls, real_load = [], torch.load

    def recording(f, *a, **k):
        calls.append((Path(f).name, k.get("weights_only")))
        return real_load(f, *a, **k)

    monkeypatch.setattr(torch, "load", recording)
    assert Comparison(cfg).execute(resume=True)["lora"]["status"] == "ok"
    assert {name for name, _ in calls} == set(PICKLED_CHECKPOINT_FILES)
    assert all(weights_only is True for _, weights_only in calls), calls


@pytest.mark.parametrize("poisoned", ["optimizer.pt", "scheduler.pt", "rng_state.pth"])
def test_a_malicious_pickle_in_any_checkpoint_file_is_refused_and_never_runs(tiny_model_dir, tmp_path, monkeypatch,
                                                                            poisoned):
    import pickle

    sentinel = tmp_path / "pwned"
    monkeypatch.setenv("EVIL_SENTINEL", str(sentinel))
    cfg, ckpt = _resumable_run(tiny_model_dir, tmp_path)
    (ckpt / poisoned).write_bytes(pickle.dumps(_Evil()))
    res = Comparison(cfg).execute(resume=True)
    assert not sentinel.exists()
    assert res["lora"]["status"] == "failed"
    assert "checkpoint-2 could not be loaded (UnpicklingError" in res["lora"]["error"]


def test_package_requires_a_torch_with_safe_loading():
    import re

    text = (ROOT / "pyproject.toml").read_text()
    major, minor = map(int, re.search(r'"torch>=(\d+)\.(\d+)"', text).groups())
    assert (major, minor) >= (2, 6)  # weights_only=True by default from 2.6


@pytest.mark.slow
def test_two_processes_train_different_data_and_end_with_identical_adapters(tiny_model_dir, tmp_path):
    import socket

    with socket.socket() as sock:  # a free port, not a fixed one another run may hold
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
           str(ROOT / "tests" / "ddp_worker.py"), str(tiny_model_dir), str(tmp_path)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2
    assert len(r0["seen"]) == len(r1["seen"]) == 12 and not set(r0["seen"]) & set(r1["seen"])
    assert r0["adapter"].keys() == r1["adapter"].keys() and r0["adapter"]
    for k in r0["adapter"]:
        assert r0["adapter"][k] == pytest.approx(r1["adapter"][k], rel=1e-6, abs=1e-9)
    results = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert results["lora"]["status"] == "ok"


def test_out_of_memory_names_the_need_and_the_fixes(tiny_model_dir, tmp_path, monkeypatch):
    from nbatune.training import AnswerOnlyTrainer

    def oom(self, *a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(AnswerOnlyTrainer, "training_step", oom)
    res = Comparison(_cfg(tiny_model_dir, tmp_path, methods=["lora", "full"], **{"train.save_steps": 0})).execute()
    for m in ("lora", "full"):
        err = res[m]["error"]
        assert res[m]["status"] == "failed" and "out of memory while training" in err
        assert "train.batch_size: 8 -> 4 and train.grad_accum: 1 -> 2" in err
    assert "qlora (a 4-bit base" in res["lora"]["error"] and "adamw_8bit" in res["full"]["error"]


def test_a_real_cpu_allocation_failure_gets_the_advice_and_the_next_technique_runs(tiny_model_dir, tmp_path):
    """torch's CPU allocator raises a plain RuntimeError ("DefaultCPUAllocator: can't allocate memory"), not
    OutOfMemoryError; under a real address-space limit it must still become the out-of-memory advice."""
    cfg = _cfg(tiny_model_dir, tmp_path, methods=["full", "lora"], **{"train.save_steps": 0, "train.max_steps": 2,
                                                                       "eval.retention": False})
    cfg_file = tmp_path / "oom-config.json"
    cfg_file.write_text(json.dumps(cfg))
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "oom_child.py"), str(cfg_file), "24"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    err = got["full"]["error"]
    assert got["full"]["status"] == "failed" and err.startswith("OutOfMemoryHint: out of memory while training full.")
    assert "One allocation of 24.00 GiB failed" in err and "GiB (peak resident)" in err
    assert "train.batch_size: 8 -> 4 and train.grad_accum: 1 -> 2" in err and "adamw_8bit" in err
    assert got["lora"] == {"status": "ok", "error": None}
    assert "DefaultCPUAllocator: can't allocate memory" in (Path(cfg["output_dir"]) / "r" / "full-error.txt").read_text()


def test_an_unwritable_output_directory_is_named_before_training(tiny_model_dir, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root ignores permissions: make the parent a file instead
            locked.chmod(0o700)
            locked.rmdir()
            locked.write_text("not a folder")
        with pytest.raises(OSError, match="output_dir: cannot create"):
            Comparison(tiny_config(tiny_model_dir, tmp_path, output_dir=str(locked / "runs"))).setup()
    finally:
        if locked.is_dir():
            locked.chmod(0o700)
