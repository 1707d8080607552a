"""Learning-rate sweep per technique: short runs over a grid, each scored on validation, best kept.

At a short budget the ranking of techniques mostly reflects their learning rates (LoRA's best rate
is about 10x full fine-tuning's, "LoRA Without Regret", 2025), so every technique gets its own best
rate from the same grid search before the comparison is trusted. Selection uses validation only, never
a test split: NBA validation (teacher-forced exact match: every answer token is the greedy one) and the
general-knowledge validation split (generated answers), under the operating-point policy of the run
(``decisions.operating_point``: the best NBA score among the rates that keep ``eval.keep_general`` of
the base's general score; ties to the smaller rate).

    python bench/sweep.py --steps 60 --json bench/sweep-cpu-YYYYMMDD.json
    python bench/sweep.py --methods lora --grid lora=1e-3,2e-3,4e-3 --steps 30
    python bench/sweep.py --methods dora,ia3 --steps 60    # any registry entry: half, once, twice its rate

Every run uses the default config (data, batch, schedule) with only the learning rate and the steps
changed, the same seed and the same validation rows.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GRID = {"full": [1e-4, 2e-4, 4e-4], "lora": [5e-4, 1e-3, 2e-3], "qlora": [5e-4, 1e-3, 2e-3]}


def default_grid(method: str) -> list[float]:
    """Any registered technique: half, once and twice its registry rate (unless GRID or --grid names one)."""
    from nbatune import techniques

    lr = techniques.get(method).learning_rate
    return GRID.get(method, [lr / 2, lr, 2 * lr])


def run_one(method: str, lr: float, steps: int, config: str | None, overrides: list[str], val_rows: int) -> dict:
    from nbatune import replay
    from nbatune.config import load_config
    from nbatune.data.prepare import prepare_training_data
    from nbatune.data.tokenize import tokenize_records
    from nbatune.evaluation import teacher_forced_exact_match
    from nbatune.measure import free_memory
    from nbatune.modeling import load_model
    from nbatune.runtime import resolve
    from nbatune.training import train

    cfg = load_config(config, [f"train.max_steps={steps}", f"train.learning_rate.{method}={lr}",
                               f"train.curve_steps={max(1, steps // 3)}", "train.logging_steps=1000",
                               "train.memory_check=skip", *overrides])
    rt = resolve(cfg.train.device, cfg.train.precision)
    data = prepare_training_data(cfg)
    path, tok, rows = data.model_path, data.tokenizer, data.train_rows
    added = 0
    if cfg.train.replays([method]):  # train on what a run trains on: general validation depends on it
        rows, replay_rows, _ = replay.prepare(rows, path, tok, cfg, rt)
        nba = len(rows)
        rows = replay.mix(rows, replay_rows, cfg.train.replay_share_for(method))
        added = len(rows) - nba
    val, _ = tokenize_records(data.records["validation"][:val_rows], tok, cfg.model.max_length, "drop", "validation")
    model = load_model(path, method, cfg.model, rt, cfg.lora, cfg.quant, cfg.seed,
                       cfg.train.gradient_checkpointing[method])
    t0 = time.perf_counter()
    out = train(model, tok, rows, method, cfg.train, rt, Path("/tmp/nbatune-sweep") / f"{method}-{lr}", cfg.seed,
                curve=lambda m: teacher_forced_exact_match(m, tok, val, rt))
    general = general_validation(model, tok, cfg, rt)
    del model
    free_memory()
    return {"method": method, "learning_rate": lr, "steps": out.steps, "final_train_loss": out.final_loss,
            "validation_exact_match": out.learning_curve[-1]["exact_match"], "general_validation": general,
            "curve": out.learning_curve, "replay_rows": added, "seconds": time.perf_counter() - t0}


def general_validation(model, tok, cfg, rt) -> float:
    """Generated answers on the retention validation split, scored as the retention test."""
    from nbatune.data import retention
    from nbatune.evaluation import general_accuracy

    val = retention.records(cfg.model.system_prompt, "validation")
    return general_accuracy(model, tok, val, rt, cfg.eval, retention.pools(), "general validation")


def base_general(config: str | None, overrides: list[str]) -> float:
    from nbatune.config import load_config
    from nbatune.data.prepare import prepare_training_data
    from nbatune.modeling import load_model
    from nbatune.runtime import resolve

    cfg = load_config(config, overrides)
    rt = resolve(cfg.train.device, cfg.train.precision)
    data = prepare_training_data(cfg)
    model = load_model(data.model_path, "base", cfg.model, rt, cfg.lora, cfg.quant, cfg.seed)
    return general_validation(model, data.tokenizer, cfg, rt)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="full,lora,qlora")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--grid", action="append", default=[], metavar="METHOD=LR,LR,...",
                   help="replace a method's grid, e.g. lora=1e-3,2e-3")
    p.add_argument("--config", default=None, help="base config (default: configs/default.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--val-rows", type=int, default=160, help="validation rows scored (default: all 160)")
    p.add_argument("--json", default=None, help="write every run and the choice here")
    args = p.parse_args()
    grid = {m: default_grid(m) for m in args.methods.split(",")}
    for item in args.grid:
        m, lrs = item.split("=", 1)
        grid[m] = [float(x) for x in lrs.split(",")]
    from nbatune.config import load_config
    from nbatune.decisions import operating_point

    ev = load_config(args.config, args.overrides).eval
    base = base_general(args.config, args.overrides)
    runs, best, why = [], {}, {}
    for m in args.methods.split(","):
        for lr in grid[m]:
            r = run_one(m, lr, args.steps, args.config, args.overrides, args.val_rows)
            runs.append(r)
            print(f"{m:>5} lr {lr:.0e}: validation exact match {r['validation_exact_match']:.1%}, general "
                  f"validation {r['general_validation']:.1%} (base {base:.1%}), train loss "
                  f"{r['final_train_loss']:.3f}, {r['seconds']:.0f} s", flush=True)
        points = [{"alpha": r["learning_rate"], "nba_validation": r["validation_exact_match"],
                   "general_validation": r["general_validation"]} for r in runs if r["method"] == m]
        choice = operating_point(points, base, 0.0, ev.keep_general, ev.fallback_margin,
                                 tie=lambda p: -p["alpha"])  # ties go to the smaller rate (the safer one)
        best[m], why[m] = choice["alpha"], choice["reason"]
    print("| technique | steps | NBA / general validation per learning rate | best |")
    print("|---|---|---|---|")
    for m in best:
        cells = ", ".join(f"{r['learning_rate']:.0e}: {r['validation_exact_match']:.1%} / {r['general_validation']:.1%}"
                          for r in runs if r["method"] == m)
        print(f"| {m} | {args.steps} steps | {cells} | **{best[m]:.0e}** ({why[m]}) |")
    if args.json:
        Path(args.json).write_text(json.dumps({"steps": args.steps, "overrides": args.overrides, "grid": grid,
                                               "base_general_validation": base, "runs": runs, "best": best,
                                               "reason": why}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
