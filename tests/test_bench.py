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
    runs = json.loads((tmp_path / "r.json").read_text())["runs"]
    assert {r["kind"] for r in runs} == {"peer", "ours"}
    assert all(r["tokens"] > 0 and r["seconds"] > 0 and r["peak"] > 0 for r in runs)
    assert "| lora |" in out.stdout
