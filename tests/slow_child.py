"""Child process for the fault tests: run a comparison with every training step slowed down, so the
parent can kill or interrupt it mid-run.

    python tests/slow_child.py CONFIG_JSON DELAY_SECONDS [STEPS_FILE]
    python tests/slow_child.py --cli DELAY_SECONDS STEPS_FILE NBATUNE_ARGS...   (exits with the CLI's code)

With STEPS_FILE, one line is appended there after every finished step.
"""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nbatune.training import AnswerOnlyTrainer  # noqa: E402

cli = sys.argv[1] == "--cli"
args = sys.argv[2:] if cli else sys.argv[1:]
if cli:
    delay, steps_file, cli_args = float(args[0]), args[1], args[2:]
else:
    cfg_path, delay, steps_file = args[0], float(args[1]), args[2] if len(args) > 2 else None
step = AnswerOnlyTrainer.training_step


def slow(self, *a, **k):
    time.sleep(delay)
    out = step(self, *a, **k)
    if steps_file:
        with open(steps_file, "a") as f:
            f.write("step\n")
    return out


AnswerOnlyTrainer.training_step = slow
if cli:
    from nbatune.cli import main

    sys.exit(main(cli_args))
from nbatune.compare import Comparison  # noqa: E402

Comparison(json.loads(Path(cfg_path).read_text())).execute()
