"""Training throughput and memory: our pipeline vs the standard TRL recipe, per technique.

The peer is TRL's ``SFTTrainer`` + PEFT as the TRL docs show it, with TRL's defaults (bf16 mixed
precision, gradient checkpointing, padded random batches, completion-only loss). Both sides get the
same model, the same training examples in chat form, the same batch size and number of steps, and
the same LoRA shape. Each run is its own process (clean memory), in A-B-B-A order so drift cancels.

    python bench/bench_cpu.py --steps 12 --methods full,lora,qlora        # prints a markdown table

MFU counts 6 x params x tokens for full fine-tuning and 4 x params x tokens for LoRA/QLoRA (forward,
plus the backward pass for activations only: frozen weights get no weight gradient), divided by the
measured bf16 matmul peak of this machine. Both sides are credited with the same FLOPs per token.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def matmul_peak(dtype_name: str, n: int = 2048, reps: int = 10) -> float:
    import torch

    dt = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    a, b = torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t)


def run_ours(method: str, steps: int, batch: int) -> dict:
    from nbatune.config import load_config
    from nbatune.data.loading import load_splits
    from nbatune.data.tokenize import tokenize_records
    from nbatune.measure import PeakMemory
    from nbatune.modeling import count_parameters, load_model, load_tokenizer, resolve_model_path
    from nbatune.runtime import resolve
    from nbatune.training import train

    cfg = load_config(None, [f"train.max_steps={steps}", f"train.batch_size={batch}", "train.logging_steps=1000"])
    rt = resolve(cfg.train.device, cfg.train.precision)
    path = resolve_model_path(cfg.model)
    tok = load_tokenizer(path, cfg.model)
    rows, _ = tokenize_records(load_splits(cfg.data, cfg.model, cfg.seed)["train"], tok, cfg.model.max_length,
                               "truncate", "train")
    with PeakMemory(rt.device) as mem:
        model = load_model(path, method, cfg.model, rt, cfg.lora, cfg.quant, cfg.seed,
                           cfg.train.gradient_checkpointing[method])
        out = train(model, tok, rows, method, cfg.train, rt, Path("/tmp/nbatune-bench/ours"), cfg.seed)
    trainable, total = count_parameters(model)
    return {"tokens": out.real_tokens, "seconds": out.seconds, "peak": mem.peak_bytes, "trainable": trainable,
            "total": total}


def run_peer(method: str, steps: int, batch: int) -> dict:
    import datasets
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    from nbatune.config import load_config
    from nbatune.data.loading import load_splits
    from nbatune.measure import PeakMemory
    from nbatune.modeling import count_parameters, resolve_model_path

    cfg = load_config(None)
    path = resolve_model_path(cfg.model)
    recs = load_splits(cfg.data, cfg.model, cfg.seed)["train"]
    ds = datasets.Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in recs])
    init = {}
    if method == "qlora":
        init["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                         bnb_4bit_use_double_quant=True)
    peft = None if method == "full" else LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=0.0,
                                                    target_modules="all-linear", task_type="CAUSAL_LM")
    args = SFTConfig(output_dir="/tmp/nbatune-bench/peer", max_steps=steps, per_device_train_batch_size=batch,
                     learning_rate=cfg.train.learning_rate[method], use_cpu=True, report_to="none",
                     logging_steps=1000, save_strategy="no", seed=cfg.seed, model_init_kwargs=init or None)
    with PeakMemory("cpu") as mem:
        trainer = SFTTrainer(model=path, args=args, train_dataset=ds, peft_config=peft)
        counter = _CountingCollator(trainer.data_collator)
        trainer.data_collator = counter
        result = trainer.train()
    trainable, total = count_parameters(trainer.model)
    return {"tokens": counter.tokens, "seconds": result.metrics["train_runtime"], "peak": mem.peak_bytes,
            "trainable": trainable, "total": total}


class _CountingCollator:
    """Counts real (attention-mask) tokens that reach the model."""

    def __init__(self, inner):
        self.inner, self.tokens = inner, 0

    def __call__(self, batch):
        out = self.inner(batch)
        self.tokens += int(out["attention_mask"].sum()) if "attention_mask" in out else int(out["input_ids"].numel())
        return out


def child(kind: str, method: str, steps: int, batch: int) -> None:
    import logging

    logging.disable(logging.WARNING)
    res = (run_ours if kind == "ours" else run_peer)(method, steps, batch)
    print("BENCH " + json.dumps({"kind": kind, "method": method, **res}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--methods", default="full,lora,qlora")
    p.add_argument("--pairs", type=int, default=1, help="A-B-B-A blocks per method")
    p.add_argument("--json", default=None, help="also write raw runs here")
    p.add_argument("--one", nargs=2, metavar=("KIND", "METHOD"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        return child(a.one[0], a.one[1], a.steps, a.batch)
    peaks = {d: matmul_peak(d) for d in ("bf16", "fp32")}
    print(f"matmul peak: bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s, fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s", flush=True)
    runs = []
    for method in a.methods.split(","):
        for _ in range(a.pairs):
            for kind in ("peer", "ours", "ours", "peer"):
                cmd = [sys.executable, __file__, "--one", kind, method, "--steps", str(a.steps), "--batch", str(a.batch)]
                out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "TQDM_DISABLE": "1"})
                line = [x for x in out.stdout.splitlines() if x.startswith("BENCH ")]
                if not line:
                    raise SystemExit(f"{kind} {method} failed:\n{out.stderr[-3000:]}")
                r = json.loads(line[0][6:])
                r["tok_s"] = r["tokens"] / r["seconds"]
                runs.append(r)
                print(f"  {kind:4} {method:5} {r['tok_s']:7.0f} real tok/s  peak {r['peak'] / 2**20:7.0f} MiB", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps({"peaks": peaks, "runs": runs}, indent=2))
    print()
    print("| technique | peer tok/s | ours tok/s | speed-up | peer peak MiB | ours peak MiB | memory ratio | peer MFU | ours MFU |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for method in a.methods.split(","):
        def agg(kind, key, f=statistics.median):
            return f([r[key] for r in runs if r["kind"] == kind and r["method"] == method])

        tp, to = agg("peer", "tok_s"), agg("ours", "tok_s")
        mp, mo = agg("peer", "peak", max), agg("ours", "peak", max)
        total = agg("ours", "total")
        flops_per_token = (6 if method == "full" else 4) * total
        mfu = lambda t: 100 * t * flops_per_token / peaks["bf16"]  # noqa: E731
        print(f"| {method} | {tp:.0f} | {to:.0f} | {to / tp:.2f}x | {mp / 2**20:.0f} | {mo / 2**20:.0f} | "
              f"{mo / mp:.2f} | {mfu(tp):.1f}% | {mfu(to):.1f}% |")


if __name__ == "__main__":
    main()
