"""Full fine-tuning, forward and backward of 12 default-config batches: fp32 weights under bf16 autocast (today's
path) against the same weights cast to bf16, the upper bound of bf16 weights with fp32 master copies held by the
optimizer (issue 21). One process, a warm-up pass, then A-A-B-B-A-A-B-B, with the losses of both:

    python bench/full_bf16_weights.py > bench/full-bf16-weights-cpu-YYYYMMDD.json
"""

import copy
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import torch

from nbatune.attention import LEAN_EAGER, attention_kernel
from nbatune.config import load_config
from nbatune.data.prepare import prepare_training_data
from nbatune.data.tokenize import PackedCollator
from nbatune.loss import answer_only_loss
from nbatune.measure import machine_peak
from nbatune.modeling import load_model
from nbatune.runtime import resolve

cfg = load_config(Path(__file__).resolve().parent.parent / 'configs' / 'default.yaml')
rt = resolve(cfg.train.device, cfg.train.precision)
data = prepare_training_data(cfg)
rng = random.Random(0)
batches = [rng.sample(data.train_rows, cfg.train.batch_size) for _ in range(12)]
col = PackedCollator(data.tokenizer.pad_token_id, cfg.train.pack_row_tokens)
cb = [col(b) for b in batches]
for b in cb: b.pop("real_tokens")
m32 = load_model(data.model_path, 'full', cfg.model, rt, cfg.lora, cfg.quant, cfg.seed, False).train()
m16 = copy.deepcopy(m32).to(torch.bfloat16)
res = {"fp32": [], "bf16": []}
losses = {}
for i, name in enumerate(["fp32", "fp32", "bf16", "bf16", "fp32", "fp32", "bf16", "bf16", "fp32"]):
    model = m32 if name == "fp32" else m16
    with attention_kernel(model, LEAN_EAGER):
        t0 = time.perf_counter(); ls = []
        for batch in cb:
            with rt.autocast():
                loss, _ = answer_only_loss(model, batch, None, cfg.train.loss_chunk_tokens)
            loss.backward(); model.zero_grad(set_to_none=True); ls.append(round(loss.item(), 4))
        if i: res[name].append(round(time.perf_counter() - t0, 2))
        losses.setdefault(name, ls)
print(json.dumps({"res": res, "change": sum(res["bf16"]) / sum(res["fp32"]) - 1, "losses": losses, "matmul": machine_peak("cpu")}))
