"""lm-evaluation-harness on a run's models: the run's NBA test split and its general-knowledge retention split as
local lm-eval tasks (``generate_until``, the run's prompts and stop sequences, the project's scorer through the
harness's ``process_results`` hook), and an lm-eval model that answers with a run's technique exactly as it was
scored (``NbatuneLM``).

    nbatune harness runs/<run> --method lora          # lm_eval.simple_evaluate on the run's model, at its point
    # any model lm-eval can load, e.g. an export, on the same tasks (its own generation, so not bit-identical):
    lm_eval --model hf --model_args pretrained=runs/<run>/lora/merged \\
        --include_path runs/<run>/harness --tasks nbatune_nba,nbatune_retention

lm-eval is the optional extra ``nbatune[harness]``.
"""

from __future__ import annotations

import json
from pathlib import Path

TASKS = ("nbatune_nba", "nbatune_retention")

_YAML = """\
# Written by `nbatune harness` for {run}: the run's {what}, as scored by nbatune.
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: prompt
doc_to_target: answer
target_delimiter: ""
generation_kwargs:
  until: {until}
  do_sample: false
  max_gen_toks: {max_gen_toks}
process_results: !function nbatune_scoring.process_results
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

_SCORING = '''"""The nbatune scorer as lm-eval's process_results hook (written by `nbatune harness`)."""
_metric = []


def process_results(doc, results):
    if not _metric:
        from nbatune.scoring import scorer

        _metric.append(scorer())
    ok = _metric[0].is_correct(results[0], doc["answer"], doc["answer_type"], doc["tolerance"],
                               doc["candidates"] or None)
    return {"acc": float(ok)}
'''


def write_tasks(run_dir: str | Path) -> Path:
    """Write ``<run>/harness/``: one JSONL and one task YAML per split (rendered prompts, references, answer types,
    tolerances, candidate pools, the per-question answer budget) and the scoring hook. Returns the folder."""
    from .data import retention
    from .data.tokenize import render_prompt
    from .evaluation import RETENTION_MAX_NEW_TOKENS, answer_budgets, stop_token_ids
    from .modeling import load_tokenizer
    from .rundir import finished
    from .scoring import candidate_pools

    run_dir = Path(run_dir).resolve()
    results, cfg, records = finished(run_dir)
    tok = load_tokenizer(results["model_path"], cfg.model)
    sp = cfg.model.system_prompt
    splits = {"nbatune_nba": ("NBA test split", records["test"][: cfg.eval.max_test_examples],
                              candidate_pools(*records.values()), cfg.eval.max_new_tokens),
              "nbatune_retention": ("general-knowledge retention test split", retention.records(sp, "test"),
                                    retention.pools(),
                                    RETENTION_MAX_NEW_TOKENS)}
    folder = run_dir / "harness"
    folder.mkdir(exist_ok=True)
    until = [tok.decode([i]) for i in stop_token_ids(tok, False)] + (["\n"] if cfg.eval.stop_at_newline else [])
    for task, (what, rows, pools, cap) in splits.items():
        budgets = answer_budgets(tok, rows, cap)
        with open(folder / f"{task}.jsonl", "w") as f:
            for r, b in zip(rows, budgets):
                f.write(json.dumps({"prompt": render_prompt(tok, r["messages"]), "answer": r["answer"],
                                    "answer_type": r["answer_type"], "tolerance": r["tolerance"],
                                    "category": r["category"], "unseen": bool(r.get("unseen")),
                                    "candidates": pools.get(r["category"]) or [], "max_gen_toks": b}) + "\n")
        (folder / f"{task}.yaml").write_text(_YAML.format(run=run_dir.name, what=what, task=task,
                                                           data=json.dumps(str(folder / f"{task}.jsonl")),
                                                           until=json.dumps(until), max_gen_toks=cap))
    (folder / "nbatune_scoring.py").write_text(_SCORING)
    return folder


def _lm_class():
    from lm_eval.api.model import LM

    class NbatuneLM(LM):
        """An lm-eval model that answers ``generate_until`` requests with nbatune's own greedy decoding
        (``evaluation.generate_from_prompts``): batch-invariant, under the run's autocast, each question with
        its own answer budget (the task's ``max_gen_toks`` field), so its answers are the scored ones."""

        def __init__(self, model, tokenizer, rt, batch_size: int = 64):
            super().__init__()
            self.model, self.tokenizer, self.rt, self.batch_size = model, tokenizer, rt, batch_size

        def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
            from .evaluation import generate_from_prompts

            prompts = [r.args[0] for r in requests]
            kwargs = [r.args[1] for r in requests]
            budgets = [int((r.doc or {}).get("max_gen_toks") or k.get("max_gen_toks", 256))
                       for r, k in zip(requests, kwargs)]
            newline = any("\n" in k.get("until", []) for k in kwargs)
            out = generate_from_prompts(self.model, self.tokenizer, prompts, self.rt, budgets, self.batch_size,
                                        "harness answers", stop_at_newline=newline)
            # any other stop string (as lm-eval's own models do): cut the answer there
            for i, k in enumerate(kwargs):
                for stop in k.get("until", []):
                    if stop and stop != "\n" and stop in out[i]:
                        out[i] = out[i].split(stop)[0]
            return out

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            raise NotImplementedError("nbatune's lm-eval model answers generate_until tasks (the run's own); for "
                                      "likelihood tasks run lm_eval --model hf on an export (nbatune export)")

        loglikelihood_rolling = loglikelihood

    return NbatuneLM


def evaluate(run_dir: str | Path, method: str, alpha: float | None = None, limit: int | None = None) -> dict:
    """``lm_eval.simple_evaluate`` with ``method`` of a finished run (at its operating point, or ``alpha``) on the
    run's tasks (retention too when the run scored it). Returns ``{task: {"acc", "n", "nbatune"}}``: lm-eval's
    accuracy, its number of questions, and the run's own accuracy on the same split."""
    try:
        from lm_eval import simple_evaluate
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise ImportError("nbatune harness needs lm-evaluation-harness: pip install 'nbatune[harness]'") from e
    from .config import load_config
    from .inference import load_from_run

    folder = write_tasks(run_dir)
    results = json.loads((Path(run_dir) / "results.json").read_text())
    cfg = load_config(results["config"])
    tasks = TASKS if cfg.eval.retention else TASKS[:1]
    model, tok, rt, _ = load_from_run(run_dir, method, alpha)
    lm = _lm_class()(model, tok, rt, cfg.eval.batch_size)
    out = simple_evaluate(model=lm, tasks=list(tasks), task_manager=TaskManager(include_path=str(folder)),
                          limit=limit, log_samples=False)
    own = results.get(method, {})
    scored = {"nbatune_nba": own.get("accuracy"), "nbatune_retention": (own.get("retention") or {}).get("accuracy")}
    return {t: {"acc": out["results"][t]["acc,none"], "n": out["n-samples"][t]["effective"],
                "nbatune": scored[t]} for t in tasks}
