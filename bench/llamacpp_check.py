"""A finished run's technique in real llama.cpp: export it (merged, GGUF), answer the run's first N test questions
with llama-cpp-python through the GGUF's own chat template (greedy, stopped at the line break as the run was),
and count how many answers are the scored ones and how many llama.cpp's answers are correct by the run's scorer.

    python bench/llamacpp_check.py runs/<run> --method lora --n 64 --gguf f16 --json bench/llamacpp-cpu-DATE.json

Needs the optional extra nbatune[llamacpp]. The scored model is bf16 and unmerged, the export merged and f16 (or
q8_0), so a few answers may differ; the test suite checks the same on a tiny model (tests/test_artifacts.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("--method", default="lora")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--gguf", default="f16", choices=["f16", "q8_0"])
    p.add_argument("--json", default=None)
    a = p.parse_args()

    import llama_cpp

    from nbatune.cli import main as cli
    from nbatune.evaluation import answer_budgets
    from nbatune.modeling import load_tokenizer
    from nbatune.rundir import finished
    from nbatune.scoring import candidate_pools, scorer

    run = Path(a.run).resolve()
    res, cfg, records = finished(run)
    test = records["test"][: cfg.eval.max_test_examples][: a.n]
    scored = res[a.method]["predictions"][: a.n]
    out = run / a.method / f"gguf-{a.gguf}"
    t0 = time.perf_counter()
    assert cli(["export", str(run), "--method", a.method, "--out", str(out), "--gguf", a.gguf]) == 0
    export_s = time.perf_counter() - t0
    llm = llama_cpp.Llama(model_path=str(out / f"model-{a.gguf}.gguf"), n_ctx=1024, n_threads=2, verbose=False)
    budgets = answer_budgets(load_tokenizer(res["model_path"], cfg.model), test, cfg.eval.max_new_tokens)
    t1 = time.perf_counter()
    got = [llm.create_chat_completion(messages=r["messages"][:-1], temperature=0.0, max_tokens=b,
                                      stop=["\n"])["choices"][0]["message"]["content"].strip()
           for r, b in zip(test, budgets)]
    answer_s = time.perf_counter() - t1
    metric, pools = scorer(), candidate_pools(*records.values())
    ok = [metric.is_correct(g, r["answer"], r["answer_type"], r.get("tolerance"), pools.get(r["category"]))
          for g, r in zip(got, test)]
    same = sum(g == s for g, s in zip(got, scored))
    summary = {"run": str(run), "method": a.method, "alpha": res[a.method].get("operating_point", {}).get("alpha"),
               "gguf": a.gguf, "questions": len(test), "same_as_scored": same,
               "llamacpp_correct": sum(ok), "scored_correct": sum(res[a.method]["correct"][: a.n]),
               "export_s": round(export_s, 1), "answer_s": round(answer_s, 1),
               "llama_cpp_python": llama_cpp.__version__,
               "differ": [{"q": r["messages"][-2]["content"][:120], "llamacpp": g, "scored": s}
                          for r, g, s in zip(test, got, scored) if g != s]}
    text = json.dumps(summary, indent=1)
    if a.json:
        Path(a.json).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
