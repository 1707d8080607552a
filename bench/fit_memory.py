"""Refit nbatune.memory's three fitted constants from a bench/memory.py JSON (the rows not held out):

    python bench/fit_memory.py bench/memory-fit-cpu-20261129.json

Model: measured = weights + optimizer + k x (activations + logits) + O + c x parameters, least squares
over (k, O, c); gradient-checkpointing rows are left out (their activations are tiny). Prints the
constants and each row's error; the figures in nbatune/memory.py came from the file named above.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    from nbatune.memory import model_shape
    from nbatune.modeling import default_cache_dir

    rows = [r for r in json.loads(Path(sys.argv[1]).read_text()) if not r["gc"] and not r.get("held_out")]
    params = {}
    for r in rows:
        if r["model"] not in params:
            path = (str(default_cache_dir() / "smollm2-135m-instruct") if r["model"] == "embedded"
                    else f"/tmp/nbatune-bench/models/{r['model']}")  # bench/memory.py's default --models-dir
            params[r["model"]] = model_shape(path).params
    x = np.array([[r["parts"]["activations"] + r["parts"]["logits"], 1.0, params[r["model"]]] for r in rows])
    y = np.array([r["measured"] - r["parts"]["weights"] - r["parts"]["optimizer"] for r in rows])
    (k, o, c), *_ = np.linalg.lstsq(x, y, rcond=None)
    print(f"working fraction {k - 1:.3f}, overhead {o / 2**20:.0f} MiB + {c:.2f} bytes/parameter")
    for r, xi, yi in zip(rows, x, y):  # error of the whole peak
        print(f"  {r['model']:10} {r['method']:5} batch {r['batch']:2}: {100 * (xi @ [k, o, c] - yi) / r['measured']:+.0f}%")


if __name__ == "__main__":
    main()
