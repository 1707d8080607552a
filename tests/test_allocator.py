"""The nbatune command on tcmalloc where it is installed (nbatune.allocator), and memory measured from a heap that
holds no earlier phase's freed pages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nbatune import allocator
from tests.helpers import tiny_config

TCMALLOC = allocator.find_tcmalloc()
needs_tcmalloc = pytest.mark.skipif(TCMALLOC is None, reason=f"tcmalloc is not installed ({allocator.INSTALL_HINT})")


def test_the_command_relaunches_on_tcmalloc_once_after_any_preload_and_not_when_told_not_to():
    lib = "/x/libtcmalloc_minimal.so.4"
    env = allocator.relaunch_env({"PATH": "/bin"}, lib)
    assert env["LD_PRELOAD"] == lib and env["PATH"] == "/bin"
    assert allocator.relaunch_env({"LD_PRELOAD": "/y/libfoo.so"}, lib)["LD_PRELOAD"] == f"{lib}:/y/libfoo.so"
    assert allocator.relaunch_env(env, lib) is None  # the relaunched process runs as it is, even if the preload failed
    assert allocator.relaunch_env({allocator.ENV: "system"}, lib) is None
    assert allocator.relaunch_env({}, None) is None
    with pytest.raises(ValueError, match="NBATUNE_ALLOCATOR='jemalloc': use 'tcmalloc' .* or 'system'"):
        allocator.relaunch_env({allocator.ENV: "jemalloc"}, lib)


def test_the_allocator_is_read_from_the_libraries_the_process_mapped():
    assert allocator.active("7f00-7f10 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4.5.10\n") \
        == "tcmalloc"
    assert allocator.active("7f00-7f10 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libjemalloc.so.2\n") == "jemalloc"
    assert allocator.active("7f00-7f10 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n") == "glibc"


@needs_tcmalloc
def test_freed_memory_goes_back_to_the_os_under_tcmalloc_before_a_measurement():
    child = """
import psutil, torch
from nbatune import allocator
from nbatune.measure import free_memory
rss = lambda: psutil.Process().memory_info().rss
before = rss()
x = torch.ones(64 * 2**20)  # 256 MiB
del x
kept = rss() - before
free_memory()
print(allocator.active(), kept >> 20, (rss() - before) >> 20)
"""
    out = subprocess.run([sys.executable, "-c", child], env={**os.environ, "LD_PRELOAD": TCMALLOC},
                         capture_output=True, text=True, timeout=120, check=False, cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr[-2000:]
    name, kept, left = out.stdout.split()
    assert name == "tcmalloc"
    assert int(kept) > 200 and int(left) < 50  # tcmalloc held the freed block; free_memory handed it back


@needs_tcmalloc
def test_nbatune_run_goes_on_tcmalloc_and_records_it(tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, tmp_path, run_name="tc", methods=["lora"], evaluate_base=False,
                      **{"eval.retention": False, "eval.few_shot": 0})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if k not in (allocator.ENV, "NBATUNE_ALLOCATOR_RELAUNCHED")}
    command = Path(sys.executable).parent / "nbatune"  # the console command, as `make run` calls it
    out = subprocess.run([str(command), "run", "--config", str(path)], env=env, capture_output=True, text=True,
                         timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads((Path(cfg["output_dir"]) / "tc" / "results.json").read_text())
    assert res["environment"]["allocator"] == "tcmalloc" and res["lora"]["status"] == "ok"
    assert "glibc's malloc" not in out.stderr
