"""Does a refactor change results? Run one explicit config at two git revisions and compare the
training losses (every step), eval losses, training tokens and answers of full, LoRA and QLoRA.

    python bench/same_results.py 889c924 HEAD      # about a minute on 2 CPU cores

Both revisions read the same tiny random model (weights large enough that its greedy answers are not
empty) and the same JSONL data, written once from this checkout; each revision is checked out into a
temporary worktree and imported from there. Exit 0 when everything is identical.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("status", "loss_curve", "eval_loss", "train_tokens", "predictions", "accuracy")

CONFIG = {
    "mode": "test", "seed": 7, "methods": ["full", "lora", "qlora"], "evaluate_base": False,
    "model": {"max_length": 160},
    "data": {"seed": 3, "test_fraction": 0.1, "overlong": "truncate"},
    "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"},
    "train": {"max_steps": 8, "batch_size": 4, "grad_accum": 1, "learning_rate": {"full": 1e-3, "lora": 5e-3, "qlora": 5e-3},
              "gradient_checkpointing": {"full": False, "lora": False, "qlora": False}, "lr_scheduler": "cosine",
              "warmup_ratio": 0.1, "precision": "bf16", "device": "cpu", "batching": "packed", "curve_steps": 0,
              "logging_steps": 1, "memory_check": "skip", "loss_chunk_tokens": 512},
    "eval": {"max_new_tokens": 16, "few_shot": 0, "retention": False, "batch_size": 8, "max_test_examples": 16,
             "max_val_examples": 16},
}

# Runs inside the worktree, so that `nbatune` is that revision's.
CHILD = """
import json, os, sys
sys.path.insert(0, os.getcwd())
import nbatune
assert nbatune.__file__.startswith(os.getcwd()), nbatune.__file__
from nbatune.compare import Comparison
cfg, out = json.loads(sys.argv[1]), sys.argv[2]
res = Comparison(cfg).execute()
json.dump({m: {k: res[m].get(k) for k in %r} for m in cfg["methods"]}, open(out, "w"))
""" % (KEYS,)


def inputs(work: Path) -> tuple[Path, Path]:
    """A tiny random model with large weights and a JSONL dataset from the built-in builder."""
    import torch

    sys.path.insert(0, str(ROOT))
    from nbatune.data import builtin
    from tests.helpers import tiny_llama, tiny_tokenizer

    tok = tiny_tokenizer()
    model = tiny_llama(len(tok))
    torch.manual_seed(3)
    for p in model.parameters():
        p.data.normal_(0, 0.15)
    model.save_pretrained(work / "model")
    tok.save_pretrained(work / "model")
    with open(work / "data.jsonl", "w") as f:
        for rows in builtin.build(seed=0, train_size=240, val_size=30, test_size=30).values():
            for e in rows:
                f.write(json.dumps({"messages": [{"role": "user", "content": f"{e.instruction}\n{e.input}".strip()},
                                                 {"role": "assistant", "content": e.output}]}) + "\n")
    return work / "model", work / "data.jsonl"


def run_at(rev: str, work: Path, model: Path, data: Path) -> dict:
    tree = work / f"tree-{rev.replace('/', '_')}"
    subprocess.run(["git", "worktree", "add", "--detach", "-f", str(tree), rev], cwd=ROOT, check=True,
                   capture_output=True)
    try:
        cfg = json.loads(json.dumps(CONFIG))
        cfg["model"]["name_or_path"], cfg["data"]["source"] = str(model), str(data)
        cfg["output_dir"] = str(work / f"runs-{tree.name}")
        out = work / f"{tree.name}.json"
        subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg), str(out)], cwd=tree, check=True,
                       env={**os.environ, "TQDM_DISABLE": "1"})
        return json.loads(out.read_text())
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__)
        return 2
    before_rev, after_rev = sys.argv[1:]
    with tempfile.TemporaryDirectory(prefix="nbatune-same-") as tmp:
        work = Path(tmp)
        model, data = inputs(work)
        before, after = run_at(before_rev, work, model, data), run_at(after_rev, work, model, data)
    same = True
    for m in CONFIG["methods"]:
        diffs = [k for k in KEYS if before[m].get(k) != after[m].get(k)]
        same &= not diffs
        n = len(before[m]["predictions"] or [])
        print(f"{m:5}  {len(before[m]['loss_curve'])} step losses, eval loss {before[m]['eval_loss']:.6f}, "
              f"{n} answers: " + ("identical" if not diffs else f"DIFFERENT in {', '.join(diffs)}"))
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
