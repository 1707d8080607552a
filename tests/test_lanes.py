"""Models side by side in lanes (``nbatune.lanes``): the same results as one after another, each model in a
process of its own, and a lane that fails costs only its own model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.helpers import tiny_config

from nbatune import lanes
from nbatune.compare import Comparison


def lane_work(spec: dict, job: str) -> dict:
    """A lane's job for the isolation test (importable, so a lane's process can unpickle it)."""
    if job == "raises":
        raise ValueError("no such column")
    if job == "dies":
        os._exit(3)  # as a process killed for memory: no report, no exception
    if job.startswith("naps"):  # a long job that Ctrl-C interrupts: it reports that it was, as training does
        (Path(os.environ["LANE_TEST_DIR"]) / job).touch()
        try:
            time.sleep(120)
        except KeyboardInterrupt:
            return {"job": job, "interrupted": True}
        return {"job": job, "interrupted": False}
    if job == "speaks":
        print("hello from a lane", file=sys.stderr, flush=True)
    if job == "widens":  # waits until it is the last job running, then takes every core
        for _ in range(300):
            lanes.widen()
            if lanes.widened_at() is not None:
                break
            time.sleep(0.1)
    return {"job": job, "threads": __import__("torch").get_num_threads(), "cores": sorted(os.sched_getaffinity(0))}


def test_a_lane_that_raises_or_dies_costs_only_its_own_job_and_the_last_one_gets_every_core(tmp_path):
    got = dict(lanes.run(["ok", "raises", "dies", "ok2", "widens"], "tests.test_lanes:lane_work", {}, 2,
                         tmp_path / "lanes"))
    assert set(got) == {"ok", "raises", "dies", "ok2", "widens"}
    assert got["raises"] == {"lane_error": "ValueError: no such column"}
    assert "exit code 3" in got["dies"]["lane_error"]
    sets = lanes.core_sets(2)
    for job in ("ok", "ok2"):  # each on one lane's cores, with that many threads
        assert got[job]["cores"] in sets and got[job]["threads"] == len(got[job]["cores"])
    assert got["widens"]["cores"] == lanes.cores() and got["widens"]["threads"] == len(lanes.cores())
    assert not (tmp_path / "lanes").exists()  # every report and flag read and removed, and their folder


def test_lanes_are_two_on_a_cpu_with_two_models_to_run_and_one_elsewhere():
    two_cores = len(lanes.cores()) >= 2
    assert lanes.auto_lanes(0, "cpu", 1, 4) == (2 if two_cores else 1)
    assert lanes.auto_lanes(0, "cpu", 1, 1) == 1  # one model: nothing to run beside it
    assert lanes.auto_lanes(0, "cuda", 1, 4) == 1
    assert lanes.auto_lanes(0, "cpu", 2, 4) == 1  # under torchrun every process already trains
    assert lanes.auto_lanes(1, "cpu", 1, 4) == 1
    assert lanes.auto_lanes(8, "cpu", 1, 3) <= 3
    for n in (1, 2, 3):
        sets = lanes.core_sets(n)
        assert sorted(c for s in sets for c in s) == lanes.cores() and max(map(len, sets)) - min(map(len, sets)) <= 1


def test_models_that_would_not_fit_side_by_side_run_one_after_another(tiny_model_dir, tmp_path):
    cmp = Comparison(tiny_config(tiny_model_dir, tmp_path, lanes=2, methods=["full", "lora"])).setup()
    est = sorted(cmp.memory_estimates[m].total for m in ("full", "lora"))
    cmp.cfg.train.memory_budget_gib = (est[1] + est[0] / 2) / 2**30  # each fits alone, not both
    assert cmp._lanes(["full", "lora"]) == 1
    cmp.cfg.train.memory_budget_gib = 2 * sum(est) / 2**30
    assert cmp._lanes(["full", "lora"]) == min(2, len(lanes.cores()))


@pytest.mark.skipif(len(lanes.cores()) < 2, reason="lanes need two cores")
def test_models_in_lanes_give_the_results_of_one_after_another(answering_model_dir, tmp_path):
    """fp32 on the tiny model: each model's losses, answers, curve and operating point are the same whether it
    ran alone with every core or in a lane beside another model; the base's validation point, measured by the
    first job's process before its own work, is every curve's origin and is counted in the base's time."""
    runs = {n: Comparison(tiny_config(answering_model_dir, tmp_path / f"lanes{n}", lanes=n, methods=["full", "lora"],
                                      **{"eval.max_new_tokens": 32})).execute() for n in (1, 2)}
    one, two = runs[1], runs[2]
    assert "lanes" not in one["environment"] and two["environment"]["lanes"]["lanes"] == 2
    assert two["environment"]["lanes"]["matmul"]["threads"] == len(two["environment"]["lanes"]["cores"][0])
    for m in ("base", "full", "lora"):
        assert two[m]["status"] == "ok", two[m]["error"]
        assert two[m]["predictions"] == one[m]["predictions"] and any(one[m]["predictions"])
        assert two[m]["retention"]["predictions"] == one[m]["retention"]["predictions"]
        assert two["phases"][m]["wall_s"] > 0
    assert two["base"]["validation"]["general_validation"] == one["base"]["validation"]["general_validation"]
    assert two["base"]["validation"]["nba_validation"] == one["base"]["validation"]["nba_validation"]
    assert two["base"]["validation"]["measured_by"] == "full" and "measured_by" not in one["base"]["validation"]
    assert two["phases"]["base"]["wall_s"] >= two["base"]["validation"]["seconds"]
    assert not list(Path(two["run_dir"]).glob(".origin*"))
    for m in ("full", "lora"):
        assert [r["loss"] for r in two[m]["train_log"] if "loss" in r] == pytest.approx(
            [r["loss"] for r in one[m]["train_log"] if "loss" in r], rel=1e-5)
        assert two[m]["curve"] == one[m]["curve"] and len(one[m]["curve"]) >= 2
        assert two[m]["operating_point"]["alpha"] == one[m]["operating_point"]["alpha"]
        assert two[m]["mfu"] > 0
    assert two["comparison"]["recommendation"] == one["comparison"]["recommendation"]


def test_ctrl_c_reaches_every_lane_and_their_reports_come_back_before_the_interrupt(tmp_path):
    """As a terminal's Ctrl-C: SIGINT to the whole process group. Each lane's job sees it (training saves a
    checkpoint and reports the model interrupted), the parent waits for their reports, yields them, and only
    then raises KeyboardInterrupt."""
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from nbatune import lanes\n"
        "got = {}\n"
        "try:\n"
        "    for job, out in lanes.run(['naps', 'naps2'], 'tests.test_lanes:lane_work', {}, 2, Path(sys.argv[1])):\n"
        "        got[job] = out\n"
        "except KeyboardInterrupt:\n"
        "    print(json.dumps(got))\n"
        "    sys.exit(130)\n"
    )
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "LANE_TEST_DIR": str(tmp_path), "PYTHONPATH": str(root)}
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "lanes")], cwd=root, env=env,
                            stdout=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 120
    while not ((tmp_path / "naps").exists() and (tmp_path / "naps2").exists()):
        assert time.monotonic() < deadline and proc.poll() is None, "the lanes never started"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert json.loads(out) == {"naps": {"job": "naps", "interrupted": True},
                               "naps2": {"job": "naps2", "interrupted": True}}


def test_a_lanes_output_reaches_a_stderr_without_a_file_descriptor(tmp_path, capsys):
    """In a notebook ``sys.stderr`` is the cell's output, not file descriptor 2: the lanes' progress bars and log
    lines are copied into it (pytest's ``capsys`` is such a stream)."""
    got = dict(lanes.run(["speaks"], "tests.test_lanes:lane_work", {}, 1, tmp_path / "lanes"))
    assert got["speaks"]["job"] == "speaks"
    assert "hello from a lane" in capsys.readouterr().err


def test_a_lane_waits_for_the_curves_origin_and_measures_its_own_when_its_measurer_failed(tiny_model_dir, tmp_path):
    """In a lane, a technique's curve reads the base's validation point from the file the first job writes,
    waiting while it is measured; when that job failed (a marker file), it gets nothing and measures alpha 0
    itself (``_operating_point``)."""
    import threading

    cmp = Comparison(tiny_config(tiny_model_dir, tmp_path, lanes=2, methods=["lora"]))
    origin = tmp_path / "origin.json"
    cmp._origin = {"by": "full", "file": str(origin)}
    point = {"alpha": 0.0, "nba_validation": 0.25, "general_validation": 0.5, "seconds": 1.0}
    late = threading.Timer(0.5, lambda: origin.write_text(json.dumps(point)))
    late.start()
    t0 = time.perf_counter()
    assert cmp._origin_point() == point and time.perf_counter() - t0 >= 0.4
    late.join()
    failed = Comparison(tiny_config(tiny_model_dir, tmp_path, lanes=2, methods=["lora"]))
    failed._origin = {"by": "full", "file": str(tmp_path / "other.json")}
    (tmp_path / "other.failed").touch()
    assert failed._origin_point() == {}
    assert Comparison(tiny_config(tiny_model_dir, tmp_path, methods=["lora"]))._origin_point() == {}  # one lane
