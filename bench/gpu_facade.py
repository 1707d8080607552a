"""The user's own path on a GPU: a short three-technique ``execute()`` through the design card's facade
with the GPU preset's settings (configs/gpu-smollm2-1.7b.yaml: r 32, paged 8-bit AdamW for QLoRA,
gradient checkpointing for full and QLoRA, batch 32), on a random-weight SmolLM2-1.7B (no hub on the
device), a few steps and a small test slice. Accuracy of a random model means nothing; what is
checked is that every technique trains, evaluates, saves and reports on CUDA, with its speed, peak
memory and the memory estimator's prediction.

    python bench/gpu_facade.py --json out.json     # on a CUDA machine (bench/gpu.sh runs it)
    python bench/gpu_facade.py --check             # the config only, anywhere
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

PRESET = ROOT / "configs" / "gpu-smollm2-1.7b.yaml"
SHORT = ["train.max_steps=5", "train.curve_steps=5", "data.val_size=32", "eval.max_test_examples=48",
         "eval.max_val_examples=32", "output_dir=/tmp/nbatune-gpu-runs"]
KEEP = ("status", "error", "accuracy", "train_seconds", "eval_seconds", "tokens_per_second", "peak_memory_bytes",
        "estimated_peak_bytes", "weights_bytes", "saved_bytes", "trainable_params", "total_params", "loss_curve")


def overrides(model_dir: str) -> list[str]:
    return [f"model.name_or_path={model_dir}", *SHORT]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models-dir", default="/tmp/nbatune-bench/models")
    p.add_argument("--json", default=None)
    p.add_argument("--check", action="store_true", help="validate the preset with the short overrides and exit")
    a = p.parse_args()
    from nbatune.config import load_config

    if a.check:
        cfg = load_config(PRESET, [o for o in overrides("unused") if not o.startswith("model.")])
        print(f"facade config ok: {cfg.methods}, {cfg.train.max_steps} steps x batch {cfg.train.batch_size}, "
              f"optimizers {cfg.train.optimizer}")
        return 0
    from models import random_checkpoint

    from implement_rec_036 import ImplementImplementFullFinetuningLoraAndQloraTechniques

    model_dir = random_checkpoint("smollm2-1.7b", a.models_dir)
    impl = ImplementImplementFullFinetuningLoraAndQloraTechniques(str(PRESET), overrides=overrides(str(model_dir)))
    impl.setup()
    res = impl.execute()
    summary = {"environment": res["environment"], "total_seconds": res["total_seconds"], "config": res["config"],
               "provenance": res.get("provenance"),
               **{m: {k: res[m].get(k) for k in KEEP} for m in ("base", "full", "lora", "qlora") if m in res}}
    text = json.dumps(summary, indent=2, default=str)
    if a.json:
        Path(a.json).write_text(text)
    print(text[:4000])
    failed = [m for m in ("base", "full", "lora", "qlora") if summary.get(m, {}).get("status") != "ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
