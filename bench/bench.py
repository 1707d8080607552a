"""Training throughput and memory: our pipeline vs the standard TRL recipe, per technique.

The peer is TRL's ``SFTTrainer`` + PEFT as the TRL docs show it, with TRL's defaults (bf16 mixed
precision, gradient checkpointing, padded random batches, completion-only loss). Both sides get the
same model, the same training examples in chat form, the same batch size and number of steps, and
the same LoRA shape. Each run is its own process (clean memory), in A-B-B-A order so drift cancels.

    python bench/bench.py --steps 12 --methods full,lora,qlora        # CPU, the embedded model
    bash bench/gpu.sh                                                 # CUDA, random-weight SmolLM2-1.7B

``--model`` takes ``embedded`` or a shape from bench/models.py (a random-weight checkpoint built from
the published config, so no hub is needed).

MFU counts 6 x params x tokens for full fine-tuning and 4 x params x tokens for LoRA/QLoRA (forward,
plus the backward pass for activations only: frozen weights get no weight gradient), divided by the
measured matmul peak of this machine in the precision our side trains in (``nbatune.measure.machine_peak``: bf16
where the CPU has it, fp32 on an AVX2-only CPU, whose bf16 is emulated in software). Both sides are credited with
the same FLOPs per token. The tuned peer trains in that precision too; TRL's defaults keep bf16 (TRL's own default).
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


def model_path(model: str, models_dir: str) -> str:
    if model == "embedded":
        return "embedded:smollm2-135m-instruct"
    from models import random_checkpoint

    return str(random_checkpoint(model, models_dir))


def run_ours(method: str, steps: int, batch: int, model: str, overrides: list[str] = ()) -> dict:
    from nbatune.data.prepare import prepare_training_data
    from nbatune.config import load_config
    from nbatune.measure import PeakMemory
    from nbatune.modeling import count_parameters, load_model
    from nbatune.runtime import resolve
    from nbatune.training import train

    cfg = load_config(None, [f"model.name_or_path={model}", f"train.max_steps={steps}", f"train.batch_size={batch}",
                             "train.logging_steps=1000", "train.memory_check=skip", *overrides])
    rt = resolve(cfg.train.device, cfg.train.precision)
    data = prepare_training_data(cfg)
    path, tok, rows = data.model_path, data.tokenizer, data.train_rows
    with PeakMemory(rt.device) as mem:
        model = load_model(path, method, cfg.model, rt, cfg.lora, cfg.quant, cfg.seed,
                           cfg.train.gradient_checkpointing[method])
        out = train(model, tok, rows, method, cfg.train, rt, Path("/tmp/nbatune-bench/ours"), cfg.seed)
    trainable, total = count_parameters(model)
    return {"tokens": out.real_tokens, "seconds": out.seconds, "peak": mem.peak_bytes, "trainable": trainable,
            "total": total}


def run_peer(method: str, steps: int, batch: int, model: str, tuned: bool = False) -> dict:
    """TRL's SFTTrainer + PEFT as the TRL docs show it (``tuned=False``: TRL's defaults, gradient
    checkpointing on, padded batches), or as a practitioner would tune it (``tuned=True``: no gradient
    checkpointing, padding-free batches, the base in bf16 for LoRA/QLoRA, the same precision as ours)."""
    import datasets
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    from nbatune.config import load_config
    from nbatune.data.loading import load_splits
    from nbatune.measure import PeakMemory
    from nbatune.modeling import count_parameters, resolve_model_path
    from nbatune.runtime import resolve

    import torch

    cfg = load_config(None, [f"model.name_or_path={model}"])
    path = resolve_model_path(cfg.model)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    recs = load_splits(cfg.data, cfg.model)["train"]
    ds = datasets.Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in recs])
    init = {}
    if method == "qlora":
        init["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                         bnb_4bit_use_double_quant=True)
    peft = None if method == "full" else LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=0.0,
                                                    target_modules="all-linear", task_type="CAUSAL_LM")
    extra = {}
    if tuned:
        # padding-free without packing: each batch's examples concatenated, as ours; TRL 1.16 wants
        # max_length=None then (our examples are all under the 320-token limit of our side)
        extra = {"gradient_checkpointing": False, "padding_free": True, "max_length": None}
        if resolve("auto", "auto").precision == "fp32":  # no native bf16 here (AVX2): ours trains in fp32 too
            extra["bf16"] = False
        elif method != "full":
            init["dtype"] = torch.bfloat16
    args = SFTConfig(output_dir="/tmp/nbatune-bench/peer", max_steps=steps, per_device_train_batch_size=batch,
                     learning_rate=cfg.train.learning_rate[method], use_cpu=device == "cpu", report_to="none",
                     logging_steps=1000, save_strategy="no", seed=cfg.seed, model_init_kwargs=init or None, **extra)
    with PeakMemory(device) as mem:
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


def child(kind: str, method: str, steps: int, batch: int, model: str, overrides: list[str]) -> None:
    import logging

    logging.disable(logging.WARNING)
    if kind == "ours":
        res = run_ours(method, steps, batch, model, overrides)
    elif kind in ("peer", "tuned"):
        res = run_peer(method, steps, batch, model, tuned=kind == "tuned")
    else:  # "base": ours with the config defaults, to measure what the --set levers change
        res = run_ours(method, steps, batch, model)
    from nbatune.allocator import active

    # each side's malloc: both inherit the parent's LD_PRELOAD, so a tcmalloc A-B is tcmalloc on both sides
    print("BENCH " + json.dumps({"kind": kind, "method": method, "allocator": active(), **res}), flush=True)


def _one(a, kind: str, method: str) -> dict:
    cmd = [sys.executable, __file__, "--one", kind, method, "--steps", str(a.steps), "--batch", str(a.batch),
           "--model", a.model, "--models-dir", a.models_dir, *(f"--set={o}" for o in a.overrides)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "TQDM_DISABLE": "1"})
    line = [x for x in out.stdout.splitlines() if x.startswith("BENCH ")]
    if not line:
        raise SystemExit(f"{kind} {method} failed:\n{out.stderr[-3000:]}")
    r = json.loads(line[0][6:])
    r["tok_s"] = r["tokens"] / r["seconds"]
    print(f"  {kind:5} {method:5} {r['tok_s']:7.0f} real tok/s  peak {r['peak'] / 2**20:7.0f} MiB", flush=True)
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--methods", default="full,lora,qlora")
    p.add_argument("--pairs", type=int, default=1, help="A-B-B-A blocks per method")
    p.add_argument("--schedule", default="abba", choices=["abba", "ab"],
                   help="abba: peer, ours, ours, peer (drift cancels); ab: one run each (when time is short)")
    p.add_argument("--model", default="embedded", help="'embedded' or a shape from bench/models.py, e.g. smollm2-1.7b")
    p.add_argument("--models-dir", default="/tmp/nbatune-bench/models", help="where random checkpoints are written")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for our side; with --against-defaults, measures one lever")
    p.add_argument("--peers", default="defaults",
                   help="TRL peers to run: defaults (TRL's defaults), tuned (as a practitioner would tune it), or both "
                        "comma-separated; each is timed against ours in its own A-B(-B-A) block")
    p.add_argument("--against-defaults", action="store_true",
                   help="compare ours with --set against ours with the defaults, instead of against TRL")
    p.add_argument("--json", default=None, help="also write raw runs here")
    p.add_argument("--one", nargs=2, metavar=("KIND", "METHOD"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        return child(a.one[0], a.one[1], a.steps, a.batch, model_path(a.model, a.models_dir), a.overrides)
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {device}; model: {a.model}; {a.steps} steps x batch {a.batch}", flush=True)
    model_path(a.model, a.models_dir)  # build a random checkpoint once, before the timed runs
    from nbatune.measure import machine_peak
    from nbatune.runtime import resolve

    machine = machine_peak("cuda" if torch.cuda.is_available() else "cpu")
    peaks = {d: machine[f"{d}_flops"] for d in ("bf16", "fp32")}
    precision = resolve("auto", "auto").precision  # what our side trains in: MFU's denominator
    print(f"matmul peak: bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s{' (emulated)' if 'emulated' in machine else ''}, "
          f"fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s; MFU against {precision}", flush=True)
    runs = []
    peers = ["base"] if a.against_defaults else [{"defaults": "peer", "tuned": "tuned"}[p] for p in a.peers.split(",")]
    for method in a.methods.split(","):
        for _ in range(a.pairs):
            for peer in peers:
                for kind in (peer, "ours", "ours", peer) if a.schedule == "abba" else (peer, "ours"):
                    runs.append(_one(a, kind, method))
    if a.json:
        from nbatune.measure import cpu_matmul_features

        Path(a.json).write_text(json.dumps({"device": device, "cpu_features": cpu_matmul_features(), "model": a.model,
                                            "steps": a.steps, "batch": a.batch, "machine": machine,
                                            "mfu_precision": precision, "runs": runs},
                                           indent=2))
    print()
    names = {"peer": "TRL defaults", "tuned": "TRL tuned", "base": "our defaults"}
    print("| technique | vs | their tok/s | ours tok/s | speed-up | their peak MiB | ours peak MiB | memory ratio | "
          "their MFU | ours MFU |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for method in a.methods.split(","):
        def agg(kind, key, f=statistics.median):
            return f([r[key] for r in runs if r["kind"] == kind and r["method"] == method])

        to, mo = agg("ours", "tok_s"), agg("ours", "peak", max)
        flops_per_token = (6 if method == "full" else 4) * agg("ours", "total")
        mfu = lambda t: 100 * t * flops_per_token / peaks[precision if precision in peaks else "bf16"]  # noqa: E731
        for peer in peers:
            tp, mp = agg(peer, "tok_s"), agg(peer, "peak", max)
            print(f"| {method} | {names[peer]} | {tp:.0f} | {to:.0f} | {to / tp:.2f}x | {mp / 2**20:.0f} | "
                  f"{mo / 2**20:.0f} | {mo / mp:.2f} | {mfu(tp):.1f}% | {mfu(to):.1f}% |")


if __name__ == "__main__":
    main()
