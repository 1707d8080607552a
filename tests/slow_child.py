"""Child process for the fault tests: run a comparison with every training step slowed down, so the
parent can kill or interrupt it mid-run.

    python tests/slow_child.py CONFIG_JSON DELAY_SECONDS [STEPS_FILE]

With STEPS_FILE, one line is appended there after every finished step.
"""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nbatune.compare import Comparison  # noqa: E402
from nbatune.training import AnswerOnlyTrainer  # noqa: E402

cfg_path, delay = sys.argv[1], float(sys.argv[2])
steps_file = sys.argv[3] if len(sys.argv) > 3 else None
step = AnswerOnlyTrainer.training_step


def slow(self, *a, **k):
    time.sleep(delay)
    out = step(self, *a, **k)
    if steps_file:
        with open(steps_file, "a") as f:
            f.write("step\n")
    return out


AnswerOnlyTrainer.training_step = slow
Comparison(json.loads(Path(cfg_path).read_text())).execute()
