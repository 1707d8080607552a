"""Issue 21's "merge adapters into a bf16 copy for generation", measured: LoRA's test answers with the adapter
unmerged (how every run scores it, and how ``ask`` answers) against the adapter merged into the bf16 base
(PEFT's ``merge_adapter``), in the order unmerged, merged, unmerged, merged (the model reloaded between pairs,
since unmerging in bf16 does not give back the base's weights). Reports the seconds of each pass, how many
answers are the same text, and the accuracy of each.

    python bench/lora_merged_eval.py runs/<run> bench/lora-merged-eval-cpu-DATE.json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(run: str, out_file: str) -> int:
    from nbatune import evaluation, scoring
    from nbatune.config import load_config
    from nbatune.data.prepare import prepare_training_data
    from nbatune.inference import load_from_run
    from nbatune.measure import machine_peak

    cfg = load_config(f"{run}/config.yaml", [])
    data = prepare_training_data(cfg)
    records = data.records["test"]
    pools = scoring.candidate_pools(*data.records.values())
    seconds: dict[str, list[float]] = {"unmerged": [], "merged": []}
    answers: dict[str, list[list[str]]] = {"unmerged": [], "merged": []}
    for _ in range(2):
        model, tok, rt, _ = load_from_run(run, "lora", 1.0)
        budgets = evaluation.answer_budgets(tok, records, cfg.eval.max_new_tokens)
        for name in ("unmerged", "merged"):
            if name == "merged":
                model.merge_adapter()
            t = time.perf_counter()
            answers[name].append(evaluation.generate_answers(model, tok, records, rt, budgets, cfg.eval.batch_size,
                                                             desc=name, stop_at_newline=True))
            seconds[name].append(round(time.perf_counter() - t, 1))
            print(name, seconds[name][-1], flush=True)
    same = sum(a == b for a, b in zip(answers["unmerged"][0], answers["merged"][0]))
    repeat = {k: sum(a == b for a, b in zip(*v)) for k, v in answers.items()}
    acc = {k: scoring.score(records, v[0], pools)["accuracy"] for k, v in answers.items()}
    print(f"same answers unmerged vs merged {same} / {len(records)}; each against its repeat {repeat}; accuracy {acc}")
    Path(out_file).write_text(json.dumps({
        "what": "LoRA test answers, adapter unmerged vs merged into the bf16 base (PEFT merge_adapter), "
                "order unmerged, merged, unmerged, merged; the model reloaded between pairs",
        "run": run, "n": len(records), "same_answers": same, "same_as_own_repeat": repeat, "accuracy": acc,
        "seconds": seconds, "matmul": machine_peak("cpu"), "batch_size": cfg.eval.batch_size}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
