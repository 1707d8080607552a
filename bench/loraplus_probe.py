"""bench/dev_probe.py with LoRA+ (Hayou et al. 2024): every lora_B matrix at LORAPLUS_RATIO x the learning rate
(an environment variable; 0 or unset: plain LoRA). The A-B of 2026-12-06, bench/probe-loraplus-cpu-20261206.json:

    LORAPLUS_RATIO=4 python bench/loraplus_probe.py --method lora --alphas 0.75,0.5 --json /tmp/r4.json
"""

import os
import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from transformers import Trainer

from nbatune import training

RATIO = float(os.environ.get("LORAPLUS_RATIO", "0") or 0)


def create_optimizer(self, *args, **kwargs):
    if "bitsandbytes" in sys.modules:  # as AnswerOnlyTrainer.create_optimizer
        sys.modules["bitsandbytes"].optim.GlobalOptimManager.get_instance().initialize()
    if not RATIO:
        return Trainer.create_optimizer(self, *args, **kwargs)
    cls, okw = Trainer.get_optimizer_cls_and_kwargs(self.args, self.model)
    decay, lr, groups = set(self.get_decay_parameter_names(self.model)), self.args.learning_rate, {}
    for n, p in self.model.named_parameters():
        if p.requires_grad:
            groups.setdefault(("lora_B" in n, n in decay), []).append(p)
    self.optimizer = cls([{"params": ps, "lr": lr * (RATIO if b else 1.0),
                           "weight_decay": self.args.weight_decay if d else 0.0} for (b, d), ps in groups.items()],
                         **{k: v for k, v in okw.items() if k != "lr"}, lr=lr)
    return self.optimizer


training.AnswerOnlyTrainer.create_optimizer = create_optimizer
sys.argv = ["dev_probe.py", *sys.argv[1:]]
runpy.run_path(str(HERE / "dev_probe.py"), run_name="__main__")
