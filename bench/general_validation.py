"""How well general validation predicts the retention test: a finished run's models (alpha 1) answer the whole
general validation split; the share of the base's score each keeps on the original 77 questions, on the
validation-only bank and on all of them, beside the run's recorded retention test.

    python bench/general_validation.py runs/<run> --json bench/general-validation-DATE.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("--methods", nargs="+", default=["full", "lora", "qlora"])
    p.add_argument("--json", default=None)
    a = p.parse_args()

    from nbatune import evaluation
    from nbatune.config import load_config
    from nbatune.data import retention
    from nbatune.inference import load_from_run
    from nbatune.measure import machine_peak

    res = json.loads((Path(a.run) / "results.json").read_text())
    cfg = load_config(res["config"])
    val = retention.records(cfg.model.system_prompt, "validation")
    split = len(val) - len(retention.validation_only())
    out = {"run": a.run, "matmul": machine_peak("cpu"), "models": {}}
    for m in ["base", *a.methods]:
        model, tok, rt, _ = load_from_run(a.run, m, alpha=1.0)
        c = evaluation.answer_and_score(model, tok, val, rt, cfg.eval, retention.pools(), "general validation",
                                        evaluation.RETENTION_MAX_NEW_TOKENS)["correct"]
        out["models"][m] = {"split_77": sum(c[:split]) / split, "bank": sum(c[split:]) / (len(c) - split),
                            "all": sum(c) / len(c), "test_recorded": res[m]["retention"]["accuracy"]}
    base = out["models"]["base"]
    for m in a.methods:
        out["models"][m]["kept"] = {k: out["models"][m][k] / base[k] for k in base if base[k]}
        print(m, {k: round(v, 3) for k, v in out["models"][m]["kept"].items()}, flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
