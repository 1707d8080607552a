"""Try a training change on one technique without touching the reported test: train with the default config
plus overrides, then score generated answers on a *development* set (the test split of the built-in dataset
built with another data seed: other stat lines, and the held-out stat-line format included, so seen and unseen
accuracy can both be read) and on the general-knowledge validation split.

Design choices (data mix, answer form, budget, learning rates) are made on these figures; the run's own test
split (data.seed 42) is only ever reported.

    python bench/dev_probe.py --method lora --set train.max_steps=80 --json /tmp/probe.json
    python bench/dev_probe.py --method full --set train.learning_rate.full=3e-4 --dev-size 192
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEV_SEED = 7  # any seed but the run's data.seed: its test split is the development set


def dev_records(cfg, size: int) -> list[dict]:
    """The test split of another build: same generator, other numbers; unseen-format questions included."""
    import dataclasses

    from nbatune.data.loading import load_splits

    data = dataclasses.replace(cfg.data, seed=DEV_SEED, test_size=size)
    return load_splits(data, cfg.model)["test"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="lora")
    p.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"))
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--dev-size", type=int, default=192)
    p.add_argument("--no-general", action="store_true", help="skip the general-knowledge validation")
    p.add_argument("--drop-categories", default="",
                   help="comma-separated training categories left out (which data drives forgetting)")
    p.add_argument("--alphas", default="",
                   help="comma-separated alphas below 1 also scored on dev and general validation (the learning-"
                        "forgetting curve: a LoRA's update scaled, full fine-tuning interpolated to the base)")
    p.add_argument("--json", default=None)
    a = p.parse_args()

    from nbatune import interpolation, replay, scoring
    from nbatune.config import load_config
    from nbatune.data import retention
    from nbatune.data.prepare import prepare_training_data
    from nbatune.data.tokenize import tokenize_records
    from nbatune.evaluation import answer_and_score, general_accuracy
    from nbatune.measure import reuse_freed_memory
    from nbatune.modeling import load_model
    from nbatune.runtime import resolve
    from nbatune.training import train

    cfg = load_config(a.config, ["train.memory_check=skip", "train.curve_steps=0", *a.overrides])
    rt = resolve(cfg.train.device, cfg.train.precision)
    t0 = time.perf_counter()
    data = prepare_training_data(cfg)
    rows = data.train_rows
    dropped = {c for c in a.drop_categories.split(",") if c}
    if dropped:
        unknown = dropped - {r["category"] for r in data.records["train"]}
        if unknown:
            p.error(f"--drop-categories: no training rows of {sorted(unknown)}")
        kept = [r for r in data.records["train"] if r["category"] not in dropped]
        rows, _ = tokenize_records(kept, data.tokenizer, cfg.model.max_length, cfg.data.overlong, "train")
    if cfg.train.replays([a.method]):
        rows, replay_rows, _ = replay.prepare(rows, data.model_path, data.tokenizer, cfg, rt)
        rows = replay.mix(rows, replay_rows, cfg.train.replay_share_for(a.method))
    dev = dev_records(cfg, a.dev_size)
    pools = scoring.candidate_pools(*data.records.values(), dev)
    general = retention.records(cfg.model.system_prompt, "validation")
    gpools = retention.pools()
    setup_s = time.perf_counter() - t0
    with reuse_freed_memory():
        model = load_model(data.model_path, a.method, cfg.model, rt, cfg.lora, cfg.quant, cfg.seed,
                           cfg.train.gradient_checkpointing.get(a.method, False))
        alphas = [float(x) for x in a.alphas.split(",") if x]
        how = interpolation.curve_kind(a.method, cfg.lora) if alphas else None
        initial = interpolation.trainable_state(model) if how == "interpolate" else None
        t1 = time.perf_counter()
        out = train(model, data.tokenizer, rows, a.method, cfg.train, rt, Path("/tmp/nbatune-probe") / a.method,
                    cfg.seed)
        train_s = time.perf_counter() - t1
        t2 = time.perf_counter()
        res = answer_and_score(model, data.tokenizer, dev, rt, cfg.eval, pools, "dev answers")
        gen = None if a.no_general else general_accuracy(model, data.tokenizer, general, rt, cfg.eval, gpools)
        eval_s = time.perf_counter() - t2
        curve = []
        if alphas:
            path = interpolation.AlphaPath(model, how, initial)
            for alpha in alphas:
                path.set(alpha)
                r = answer_and_score(model, data.tokenizer, dev, rt, cfg.eval, pools, f"dev answers, alpha {alpha:g}")
                g = general_accuracy(model, data.tokenizer, general, rt, cfg.eval, gpools)
                curve.append({"alpha": alpha, "dev_accuracy": r["accuracy"], "seen": r["formats"]["seen"]["accuracy"],
                              "unseen": r["formats"]["unseen"]["accuracy"], "general_validation": g})
    summary = {"method": a.method, "overrides": a.overrides, "dropped_categories": sorted(dropped), "steps": out.steps, "train_s": round(train_s, 1),
               "eval_s": round(eval_s, 1), "setup_s": round(setup_s, 1), "train_tokens": out.real_tokens, "tokens_per_s": round(out.tokens_per_second),
               "final_loss": out.final_loss, "dev_accuracy": res["accuracy"], "formats": res["formats"],
               "per_category": {c: v["accuracy"] for c, v in res["per_category"].items()},
               "general_validation": gen, "curve": curve}
    misses = [{"q": r["messages"][-2]["content"][:160], "ref": r["answer"], "pred": pr}
              for r, pr, ok in zip(dev, res["predictions"], res["correct"]) if not ok and r["answer_type"] == "number"]
    text = json.dumps({**summary, "misses": misses[:40]}, indent=1, default=str)
    if a.json:
        Path(a.json).write_text(text)
    print(json.dumps(summary, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
