"""``train.lean_adapters``: LoRA layers' forward and backward through nbatune's lean forward against PEFT's own, on
16 default-config training batches (packed as training packs them; B drawn non-zero, as after training starts).
One process per technique, a warm-up pass, then P-L-L-P blocks (3 unless told), with every pass's losses and the gradients'
agreement. ``--fp32-reference`` adds how far each bf16 path's LoRA gradients are from an fp32 run's on the first 4
batches (into the same JSON file):

    python bench/lean_adapters_ab.py lora qlora --json bench/lean-adapters-ab-cpu-YYYYMMDD.json
    python bench/lean_adapters_ab.py --fp32-reference --json bench/lean-adapters-ab-cpu-YYYYMMDD.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _setup(n_batches: int, batch_size: int | None = None):
    from nbatune.config import load_config
    from nbatune.data.prepare import prepare_training_data
    from nbatune.data.tokenize import PackedCollator

    cfg = load_config(ROOT / "configs" / "default.yaml")
    data = prepare_training_data(cfg)
    rng = random.Random(0)
    collate = PackedCollator(data.tokenizer.pad_token_id, cfg.train.pack_row_tokens)
    batches = [collate(rng.sample(data.train_rows, batch_size or cfg.train.batch_size)) for _ in range(n_batches)]
    tokens = sum(int(b.pop("real_tokens")) for b in batches)
    return cfg, data, batches, tokens


def _model(cfg, data, method, rt):
    import torch

    from nbatune.modeling import load_model

    model = load_model(data.model_path, method, cfg.model, rt, cfg.lora, cfg.quant, cfg.seed).train()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01, generator=torch.Generator().manual_seed(len(name)))
    return model


def _grads(model, rt, batch, loss_chunk_tokens: int):
    import torch

    from nbatune.loss import answer_only_loss

    with rt.autocast():
        loss, _ = answer_only_loss(model, batch, None, loss_chunk_tokens)
    loss.backward()
    g = torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None])
    model.zero_grad(set_to_none=True)
    return float(loss.detach()), g


def fp32_reference(n_batches: int = 4) -> dict:
    """Relative distance of the LoRA gradients of PEFT's and the lean bf16 path from an fp32 run's, per batch."""
    from nbatune.attention import LEAN_EAGER, attention_kernel
    from nbatune.lora_kernel import lean_adapters
    from nbatune.runtime import Runtime

    cfg, data, batches, _ = _setup(n_batches)

    def grads(precision, lean):
        rt = Runtime("cpu", precision)
        model = _model(cfg, data, "lora", rt)
        with attention_kernel(model, LEAN_EAGER), lean_adapters(model, lean):
            return [_grads(model, rt, b, cfg.train.loss_chunk_tokens)[1] for b in batches]

    ref = grads("fp32", False)
    return {arm: [round(float((g - r).norm() / r.norm()), 4) for g, r in zip(grads("bf16", arm == "lean"), ref)]
            for arm in ("peft", "lean")}


def measure(method: str, n_batches: int, blocks: int, batch_size: int | None = None) -> dict:
    import torch

    from nbatune.attention import LEAN_EAGER, attention_kernel
    from nbatune.lora_kernel import lean_adapters
    from nbatune.runtime import resolve

    cfg, data, batches, tokens = _setup(n_batches, batch_size)
    rt = resolve(cfg.train.device, cfg.train.precision)
    model = _model(cfg, data, method, rt)
    seconds = {"peft": [], "lean": []}
    losses, grads = {}, {}
    for i, arm in enumerate(["peft"] + ["peft", "lean", "lean", "peft"] * blocks):
        with attention_kernel(model, LEAN_EAGER), lean_adapters(model, arm == "lean"):
            t0, ls = time.perf_counter(), []
            for batch in batches:
                loss, g = _grads(model, rt, batch, cfg.train.loss_chunk_tokens)
                grads.setdefault(arm, g)
                ls.append(round(loss, 4))
            if i:  # the first pass warms up
                seconds[arm].append(round(time.perf_counter() - t0, 2))
            losses.setdefault(arm, ls)
    a, b = grads["peft"], grads["lean"]
    return {"method": method, "batches": n_batches, "batch_size": batch_size or cfg.train.batch_size, "real_tokens": tokens, "seconds": seconds,
            "change": round(sum(seconds["lean"]) / sum(seconds["peft"]) - 1, 4),
            "change_median_of_blocks": round(statistics.median(
                (sum(seconds["lean"][2 * k:2 * k + 2]) / sum(seconds["peft"][2 * k:2 * k + 2]) - 1) for k in range(blocks)), 4),
            "losses": losses,
            "loss_rel_diff_mean": round(sum(abs(x - y) / x for x, y in zip(losses["peft"], losses["lean"])) / n_batches, 5),
            "grad_cosine": round(float(torch.nn.functional.cosine_similarity(a, b, dim=0)), 6),
            "grad_rel_diff": round(float((a - b).norm() / a.norm()), 4)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("methods", nargs="*")
    p.add_argument("--batches", type=int, default=16)
    p.add_argument("--batch", type=int, help="examples per batch (default: the config's)")
    p.add_argument("--blocks", type=int, default=3, help="P-L-L-P blocks after the warm-up pass")
    p.add_argument("--fp32-reference", action="store_true")
    p.add_argument("--json")
    a = p.parse_args()
    from nbatune.measure import machine_peak

    if a.fp32_reference:
        out = json.loads(Path(a.json).read_text()) if a.json and Path(a.json).exists() else {}
        out["fp32_reference_grad_rel_diff"] = fp32_reference()
    else:
        out = {"machine": machine_peak("cpu"), "results": [measure(m, a.batches, a.blocks, a.batch) for m in a.methods]}
    text = json.dumps(out, indent=1)
    print(text)
    if a.json:
        Path(a.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
