"""Child process for the CPU out-of-memory test: run a comparison under an address-space limit
(RLIMIT_AS), where one training step of full fine-tuning asks torch's CPU allocator for more than
the limit allows. The failure is the allocator's own (a RuntimeError from DefaultCPUAllocator).

    python tests/oom_child.py CONFIG_JSON LIMIT_GIB
"""

import json
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from nbatune import compare  # noqa: E402
from nbatune.training import AnswerOnlyTrainer  # noqa: E402

cfg_path, limit = sys.argv[1], int(float(sys.argv[2]) * 2**30)
current = {"method": None}
real_train, real_step = compare.train, AnswerOnlyTrainer.training_step


def train(model, tokenizer, rows, method, *a, **k):
    current["method"] = method
    return real_train(model, tokenizer, rows, method, *a, **k)


def step(self, *a, **k):
    if current["method"] == "full":  # as if full fine-tuning's activations needed the whole limit
        torch.empty(limit, dtype=torch.uint8).fill_(1)
    return real_step(self, *a, **k)


compare.train, AnswerOnlyTrainer.training_step = train, step
cmp = compare.Comparison(json.loads(Path(cfg_path).read_text())).setup()
resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
res = cmp.execute()
print(json.dumps({m: {"status": res[m]["status"], "error": res[m]["error"]} for m in cmp.cfg.methods}))
