"""QLoRA's test answers with its 4-bit weights dequantized once per call (``evaluation.cached_weight_casts``)
against bitsandbytes dequantizing them at every forward, both in training mode, each twice in turn: the same
answers, and how long each takes.

    python bench/qlora_dequantized_once.py runs/<run> bench/qlora-dequantized-once-exact-cpu-DATE.json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(run: str, out_file: str) -> int:
    from nbatune import evaluation
    from nbatune.config import load_config
    from nbatune.data.prepare import prepare_training_data
    from nbatune.inference import load_from_run

    model, tok, rt, _ = load_from_run(run, "qlora", 1.0)
    cfg = load_config(f"{run}/config.yaml", [])
    records = prepare_training_data(cfg).records["test"]
    budgets = evaluation.answer_budgets(tok, records, cfg.eval.max_new_tokens)
    once = evaluation._dequantized_once
    seconds: dict[str, list[float]] = {"once": [], "per_forward": []}
    answers = {}
    for name in ("once", "per_forward", "once", "per_forward"):
        # per_forward: the layers keep bitsandbytes' own forward inside cached_weight_casts
        evaluation._dequantized_once = once if name == "once" else (lambda m: type(m).forward.__get__(m))
        t = time.perf_counter()
        answers[name] = evaluation.generate_answers(model, tok, records, rt, budgets, 64, desc=name,
                                                    stop_at_newline=True)
        seconds[name].append(round(time.perf_counter() - t, 1))
        print(name, seconds[name][-1], flush=True)
    evaluation._dequantized_once = once
    same = sum(a == b for a, b in zip(answers["once"], answers["per_forward"]))
    print(f"same answers {same} / {len(records)}")
    Path(out_file).write_text(json.dumps({"run": run, "n": len(records), "same_answers": same, **seconds}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
