"""The benchmark scripts still run (they are what BENCHMARKS.md's figures come from)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_script_refuses_without_cuda_and_says_why():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh")], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHON": sys.executable})
    assert out.returncode != 0
    assert "no CUDA device visible" in out.stderr


@pytest.mark.slow
def test_benchmark_runs_ours_and_the_trl_peer_on_a_random_checkpoint(tmp_path):
    """The path bench/gpu.sh takes (a random-weight shape from bench/models.py), on CPU and tiny."""
    pytest.importorskip("trl")
    pytest.importorskip("gguf")
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench.py"), "--model", "small-mha", "--models-dir", str(tmp_path),
         "--steps", "2", "--batch", "4", "--methods", "lora", "--schedule", "ab", "--json", str(tmp_path / "r.json")],
        capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    written = json.loads((tmp_path / "r.json").read_text())
    runs = written["runs"]
    assert {r["kind"] for r in runs} == {"peer", "ours"}
    # which malloc each side ran on and the CPU's matmul features, so a figure names its machine
    assert {r["allocator"] for r in runs} <= {"tcmalloc", "jemalloc", "glibc", "unknown"}
    assert isinstance(written["cpu_features"], list)
    # the matmul peaks MFU divides by, once (measure.machine_peak's record)
    assert written["machine"]["fp32_flops"] > 0 and written["machine"]["bf16_flops"] > 0 and "peaks" not in written
    assert all(r["tokens"] > 0 and r["seconds"] > 0 and r["peak"] > 0 for r in runs)
    assert "| lora |" in out.stdout


def test_gpu_bundle_plan_and_size_arithmetic(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    import gpu_bundle

    plan = gpu_bundle.plan()
    names = [w.split("==")[0] for w in plan["wheels"]]
    assert {"trl", "peft", "transformers", "huggingface_hub", "kernels", "bitsandbytes", "datasets", "evaluate", "gguf", "dill",
            "multiprocess"} <= set(names)
    assert len(names) == len(set(names)) and all("==" in w for w in plan["wheels"])  # one pinned version each
    assert "tokenizer.json" in plan["tokenizer"] and plan["python"] == "3.12"
    mib = 2**20
    assert "60.0 MiB of 64 MiB" in gpu_bundle.check_size(45 * mib, 15 * mib)
    with pytest.raises(SystemExit, match="too large to travel: bundle 50.0 MiB \\+ working tree 15.0 MiB"):
        gpu_bundle.check_size(50 * mib, 15 * mib)
    tree = gpu_bundle.working_tree_bytes()
    assert 0 < tree < 16 * mib  # the tree leaves room for the 45 MB of wheels


def test_gpu_script_dry_run_checks_everything_but_the_gpu(tmp_path):
    out = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh")], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHON": sys.executable, "DRY_RUN": "1", "OUT": str(tmp_path),
                              "BUNDLE": str(tmp_path / "no-bundle")})
    assert out.returncode == 0, out.stderr[-2000:]
    for stage in ("bench/bench.py --model smollm2-1.7b", "--peers defaults,tuned", "bench/memory.py",
                  "bench/gpu_facade.py"):
        assert stage in out.stdout
    assert "facade config ok" in out.stdout and "dry run: ok" in out.stdout


def test_sweep_picks_each_techniques_best_rate_on_validation(answering_model_dir, tmp_path):
    import yaml

    from tests.helpers import ANSWERING, tiny_config

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(answering_model_dir, tmp_path, **ANSWERING)))
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "sweep.py"), "--config", str(cfg), "--methods", "lora",
                          "--grid", "lora=1e-9,1e-2", "--steps", "8", "--val-rows", "16", "--json", str(tmp_path / "s.json")],
                         capture_output=True, text=True, cwd=ROOT, timeout=600,
                         env={**os.environ, "NBATUNE_CACHE": str(tmp_path / "cache")})
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads((tmp_path / "s.json").read_text())
    scores = {r["learning_rate"]: r["validation_exact_match"] for r in res["runs"]}
    assert set(scores) == {1e-9, 1e-2} and all(len(r["curve"]) >= 1 for r in res["runs"])
    assert scores[1e-9] != scores[1e-2], "the answering model's scores must differ, or the pick is the tie-break"
    assert all(0 <= r["general_validation"] <= 1 for r in res["runs"]) and 0 <= res["base_general_validation"] <= 1
    # the tiny model knows no general facts (base 0%): every rate keeps all of it, so the policy is NBA's best
    assert res["best"]["lora"] == max(scores, key=lambda lr: (scores[lr], -lr))
    assert "| lora | 8 steps |" in out.stdout


def test_sweep_trains_with_replay_when_the_config_has_it(answering_model_dir, tmp_path):
    """The sweep chooses rates partly on general validation, which replay moves: it must train on the run's rows
    (until 2026-12-05 it left replay out)."""
    import yaml

    from tests.helpers import ANSWERING, tiny_config

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(answering_model_dir, tmp_path, **{**ANSWERING, "train.replay_share": 0.2})))
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "sweep.py"), "--config", str(cfg), "--methods", "lora",
                          "--grid", "lora=1e-3", "--steps", "2", "--val-rows", "4", "--json", str(tmp_path / "s.json")],
                         capture_output=True, text=True, cwd=ROOT, timeout=600,
                         env={**os.environ, "NBATUNE_CACHE": str(tmp_path / "cache")})
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((tmp_path / "s.json").read_text())["runs"][0]["replay_rows"] > 0


def test_the_bundle_keeps_only_the_cuda_13_libraries_of_bitsandbytes(tmp_path):
    import zipfile

    sys.path.insert(0, str(ROOT / "bench"))
    import gpu_bundle

    names = ["bitsandbytes/__init__.py", "bitsandbytes/libbitsandbytes_cpu.so", "bitsandbytes/libbitsandbytes_cuda118.so",
             "bitsandbytes/libbitsandbytes_cuda130.so", "bitsandbytes/libbitsandbytes_cuda132.so"]
    whl = tmp_path / "bitsandbytes-0.50.2-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        for n in names:
            z.writestr(n, b"x")
        z.writestr("bitsandbytes-0.50.2.dist-info/RECORD", "".join(f"{n},sha256=x,1\n" for n in names))
    gpu_bundle.slim_bitsandbytes(tmp_path)
    with zipfile.ZipFile(whl) as z:
        kept = set(z.namelist())
        record = z.read("bitsandbytes-0.50.2.dist-info/RECORD").decode()
    assert "bitsandbytes/libbitsandbytes_cuda118.so" not in kept and "cuda118" not in record
    assert {"bitsandbytes/libbitsandbytes_cpu.so", "bitsandbytes/libbitsandbytes_cuda130.so",
            "bitsandbytes/libbitsandbytes_cuda132.so"} <= kept


def test_front_plots_every_probe_run_and_skips_none(tmp_path):
    """bench/front.py reads both probe-file shapes (``runs`` and ``rerun_231.runs``), prints one line per run,
    and draws the plot."""
    a = {"runs": {"x": {"method": "full", "overrides": ["train.learning_rate.full=1e-4"], "dev_accuracy": 0.3,
                        "general_validation": 0.5, "formats": {"seen": {"n": 150}, "unseen": {"n": 42}}}}}
    b = {"rerun_231": {"runs": {"y": {"method": "lora", "overrides": [], "dropped_categories": ["mvp"],
                                      "dev_accuracy": 0.2, "general_validation": 0.55,
                                      "formats": {"seen": {"n": 192}}}}}, "runs": {}}
    files = []
    for name, data in (("a.json", a), ("b.json", b)):
        (tmp_path / name).write_text(json.dumps(data))
        files.append(str(tmp_path / name))
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "front.py"), "--out", str(tmp_path / "f.png"), *files],
                         capture_output=True, text=True, check=True).stdout
    assert "full 1e-4" in out and "LoRA no history" in out and (tmp_path / "f.png").stat().st_size > 10_000


def test_cpu_kind_script_names_every_file_by_this_machines_cpu_kind():
    from nbatune.measure import cpu_kind, cpu_matmul_features

    out = subprocess.run(["bash", str(ROOT / "bench" / "cpu_kind.sh")], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHON": sys.executable, "DRY_RUN": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    kind = cpu_kind(cpu_matmul_features()).lower().replace("-", "")
    plan = [line for line in out.stdout.splitlines() if line.startswith("would run:")]
    assert [p.split()[3] for p in plan] == ["bench/gemm_shapes.py", "bench/profile_steps.py", "bench/bench.py"]
    assert all(f"-{kind}-" in p for p in plan)
    assert "--batch 4" in plan[2] and "--peers tuned" in plan[2]


def test_cpu_kind_script_preloads_the_tcmalloc_nbatune_run_loads():
    """Both sides of the TRL comparison run on the allocator a run trains on: the script asks
    ``nbatune.allocator.find_tcmalloc``, as ``nbatune run`` does. (Its own ldconfig pipeline once died of SIGPIPE
    under pipefail in CI, rc 141.)"""
    from nbatune.allocator import find_tcmalloc

    lib = find_tcmalloc()
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    out = subprocess.run(["bash", str(ROOT / "bench" / "cpu_kind.sh")], capture_output=True, text=True, timeout=120,
                         env={**env, "PYTHON": sys.executable, "DRY_RUN": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"allocator preload: {lib or 'none'}" in out.stdout


def test_a_dtype_the_cpu_emulates_is_measured_small_and_marked_not_for_minutes(monkeypatch):
    """bf16 on a CPU without AVX512-BF16 or AMX runs in software (0.3 GFLOP/s on an AVX2 EPYC): the peak's thirteen
    2048-wide products took twelve minutes there, twice a run. A 256-wide probe decides; only a dtype with hardware
    behind it is measured at full size, and an emulated one is listed as such."""
    import torch

    from nbatune import measure
    from nbatune.runtime import cpu_has_native_bf16

    real = measure.machine_peak("cpu")  # this machine, whichever kind it is
    assert ("bf16" in real.get("emulated", [])) == (not cpu_has_native_bf16())
    assert "fp32" not in real.get("emulated", []) and real["fp32_flops"] > measure.EMULATED_FLOPS
    if "emulated" in real:
        assert real["bf16_flops"] < measure.EMULATED_FLOPS

    sizes = []

    def emulated_bf16(dtype, device, reps=10, n=None):
        sizes.append((dtype, n or 2048))
        return 0.3e9 if dtype == torch.bfloat16 else 150e9

    monkeypatch.setattr(measure, "matmul_peak", emulated_bf16)
    m = measure.machine_peak("cpu")
    assert m["emulated"] == ["bf16"] and m["bf16_flops"] == 0.3e9 and m["fp32_flops"] == 150e9
    assert sizes == [(torch.bfloat16, 256), (torch.float32, 256), (torch.float32, 2048)]
