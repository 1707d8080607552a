"""Validate the memory estimator: predicted vs measured peak, each case in its own process.

    python bench/memory.py                 # the embedded model and two random-weight shapes; markdown table

Measured: process RSS above its level before the model is loaded (sampled every 20 ms), through
loading and ``--steps`` training steps of our trainer (CPU), or ``max_memory_allocated`` (CUDA).

Two predictions, both from the model's config alone:
- "predicted": ``estimate_memory`` for the micro-batches that were actually trained (their positions
  and logit positions, recorded by the child): the estimator's own error;
- "planned": ``estimate_for_run``, what a run computes before training: the largest of 256 sampled
  micro-batches, so it also covers batches larger than the few measured here.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CASES = [  # (model, method, batch, gradient checkpointing, held out of the fit of nbatune.memory's constants)
    *[("embedded", m, b, False, False) for b in (16, 32) for m in ("full", "lora", "qlora")],
    *[("small-wide", m, 16, False, False) for m in ("full", "lora", "qlora")],
    ("small-mha", "lora", 32, False, False),
    ("embedded", "full", 16, True, True),
    ("embedded", "lora", 16, True, True),
    ("small-mha", "full", 16, False, True),
    ("small-mha", "qlora", 16, False, True),
    ("small-wide", "lora", 32, False, True),
]


def setup_run(model: str, method: str, batch: int, gc: bool, steps: int, models_dir: str):
    from nbatune.data.prepare import prepare_training_data
    from nbatune.config import load_config
    from nbatune.runtime import resolve

    if model != "embedded":
        from models import random_checkpoint

        model = str(random_checkpoint(model, models_dir))
    else:
        model = "embedded:smollm2-135m-instruct"
    cfg = load_config(None, [f"model.name_or_path={model}", f"methods=[{method}]", f"train.max_steps={steps}",
                             f"train.batch_size={batch}", f"train.gradient_checkpointing.{method}={str(gc).lower()}",
                             "train.logging_steps=1000"])
    rt = resolve(cfg.train.device, cfg.train.precision)
    data = prepare_training_data(cfg)
    path, tok, rows = data.model_path, data.tokenizer, data.train_rows
    return cfg, rt, path, tok, rows


def child(model: str, method: str, batch: int, gc: bool, steps: int, models_dir: str) -> None:
    import logging

    logging.disable(logging.WARNING)
    from nbatune import training
    from nbatune.measure import PeakMemory
    from nbatune.loss import logit_positions
    from nbatune.modeling import load_model

    batches = []
    loss = training.answer_only_loss

    def recording_loss(model, inputs, num_items=None, chunk_tokens=0):  # (positions, logit positions, width)
        labels = inputs["labels"]
        batches.append((labels.numel(), logit_positions(labels, chunk_tokens > 0), labels.shape[-1]))
        return loss(model, inputs, num_items, chunk_tokens)

    training.answer_only_loss = recording_loss
    cfg, rt, path, tok, rows = setup_run(model, method, batch, gc, steps, models_dir)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="nbatune-memory-") as out, PeakMemory(rt.device) as mem:
        m = load_model(path, method, cfg.model, rt, cfg.lora, cfg.quant, cfg.seed, gc)
        training.train(m, tok, rows, method, cfg.train, rt, Path(out), cfg.seed)
    print("PEAK " + json.dumps({"peak": mem.peak_bytes, "batches": batches}), flush=True)


def predict(model: str, method: str, batch: int, gc: bool, steps: int, models_dir: str, batches=None):
    """The estimate for the given (positions, logit positions, width) batches, or, without them, the plan a run makes."""
    from nbatune.memory import estimate_for_config, estimate_for_run, model_shape

    cfg, rt, path, tok, rows = setup_run(model, method, batch, gc, steps, models_dir)
    if batches is None:
        return estimate_for_run(cfg, path, rows, tok.pad_token_id, rt.device, rt.precision)[method]
    shape = model_shape(path)
    return max((estimate_for_config(cfg, method, shape, n, k, rt.device, rt.precision, w) for n, k, w in batches),
               key=lambda e: e.total)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=12, help="long enough for the CPU heap to settle")
    p.add_argument("--models-dir", default="/tmp/nbatune-bench/models")
    p.add_argument("--json", default=None, help="also write the rows here")
    p.add_argument("--models", default=None, help="comma-separated: embedded and/or shapes from bench/models.py; "
                                                  "with --batches, replaces the built-in cases")
    p.add_argument("--batches", default="16", help="comma-separated batch sizes for --models")
    p.add_argument("--methods", default="full,lora,qlora")
    p.add_argument("--one", nargs=4, metavar=("MODEL", "METHOD", "BATCH", "GC"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        return child(a.one[0], a.one[1], int(a.one[2]), a.one[3] == "1", a.steps, a.models_dir)
    import logging

    logging.disable(logging.WARNING)
    cases = CASES if not a.models else [(mo, me, int(b), False, True) for mo in a.models.split(",")
                                        for b in a.batches.split(",") for me in a.methods.split(",")]
    rows = []
    print("| model | technique | batch | grad. ckpt | held out | measured MiB | predicted MiB | error | planned MiB | error |")
    print("|---|---|---:|---|---|---:|---:|---:|---:|---:|")
    for model, method, batch, gc, held_out in cases:
        plan = predict(model, method, batch, gc, a.steps, a.models_dir)
        cmd = [sys.executable, __file__, "--steps", str(a.steps), "--models-dir", a.models_dir,
               "--one", model, method, str(batch), "1" if gc else "0"]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "TQDM_DISABLE": "1"})
        line = [x for x in out.stdout.splitlines() if x.startswith("PEAK ")]
        if not line:
            raise SystemExit(f"{model} {method} failed:\n{out.stderr[-3000:]}")
        got = json.loads(line[0][5:])
        measured = got["peak"]
        est = predict(model, method, batch, gc, a.steps, a.models_dir, got["batches"])
        err, plan_err = est.total / measured - 1, plan.total / measured - 1
        rows.append({"model": model, "method": method, "batch": batch, "gc": gc, "held_out": held_out, "measured": measured,
                     "predicted": est.total, "error": err, "planned": plan.total, "plan_error": plan_err,
                     "parts": est.parts, "batches": got["batches"]})
        print(f"| {model} | {method} | {batch} | {'on' if gc else 'off'} | {'yes' if held_out else 'no'} | "
              f"{measured / 2**20:.0f} | "
              f"{est.total / 2**20:.0f} | {100 * err:+.0f}% | {plan.total / 2**20:.0f} | {100 * plan_err:+.0f}% |",
              flush=True)
    for key, what in (("error", "predicted"), ("plan_error", "planned")):
        for group, sel in (("fitted", [r for r in rows if not r["held_out"]]), ("held out", [r for r in rows if r["held_out"]])):
            if sel:
                worst = max(sel, key=lambda r: abs(r[key]))
                print(f"{what}, {group} cases: mean |error| {100 * sum(abs(r[key]) for r in sel) / len(sel):.1f}%, "
                      f"worst {100 * worst[key]:+.0f}% ({worst['model']} {worst['method']} batch {worst['batch']})")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
