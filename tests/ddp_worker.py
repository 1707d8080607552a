"""Worker for the 2-process test (launched by torchrun): train LoRA through Comparison and record,
per rank, which examples this rank trained on and the final adapter weights."""

import hashlib
import os
import json
import sys
from pathlib import Path

import nbatune.compare as compare
import nbatune.training as training

model_dir, out_dir = sys.argv[1], Path(sys.argv[2])
seen, final = [], {}
step = training.AnswerOnlyTrainer.compute_loss


def recording(self, model, inputs, *a, **k):
    for row in inputs["input_ids"].tolist():
        seen.append(hashlib.sha1(str(row).encode()).hexdigest())
    return step(self, model, inputs, *a, **k)


training.AnswerOnlyTrainer.compute_loss = recording
real_train = compare.train


def capture(model, *a, **k):
    out = real_train(model, *a, **k)
    final.update({n: p.detach().double().sum().item() for n, p in model.named_parameters() if p.requires_grad})
    return out


compare.train = capture
cfg = {"mode": "test", "seed": 0, "output_dir": str(out_dir), "run_name": "ddp", "methods": ["lora"],
       "evaluate_base": False, "model": {"name_or_path": model_dir, "max_length": 160},
       "data": {"train_size": 96, "val_size": 8, "test_size": 8},
       "train": {"max_steps": 3, "batch_size": 4, "precision": "fp32", "batching": "padded", "logging_steps": 1},
       "eval": {"max_new_tokens": 4}}
cmp = compare.Comparison(cfg)
cmp.execute()
(out_dir / f"rank{os.environ['RANK']}.json").write_text(
    json.dumps({"seen": seen, "adapter": final, "world_size": cmp.world_size}))
