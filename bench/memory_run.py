"""A technique's training peak as a run measures it (``PeakMemory`` around loading and training, the default config),
in a fresh process, with or without ``measure.reuse_freed_memory`` (the run's glibc setting), beside the estimate.

    python bench/memory_run.py lora reuse 140     # or: plain
"""
import contextlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from nbatune.compare import Comparison
from nbatune.measure import PeakMemory, reuse_freed_memory
from nbatune.modeling import load_model
from nbatune.training import train
method, reuse, steps = sys.argv[1], sys.argv[2] == 'reuse', int(sys.argv[3])
c = Comparison(str(Path(__file__).resolve().parent.parent / 'configs' / 'default.yaml'), [f'train.max_steps={steps}', 'train.curve_steps=0', 'train.save_steps=0']).setup()
cfg = c.cfg
ctx = reuse_freed_memory() if reuse else contextlib.nullcontext()
with ctx:
    t = time.perf_counter()
    with PeakMemory('cpu') as mem:
        model = load_model(c.model_path, method, cfg.model, c.rt, cfg.lora, cfg.quant, 42)
        out = train(model, c.tokenizer, c.train_rows, method, cfg.train, c.rt, Path('/tmp/memab') / method, 42)
    print(json.dumps({'method': method, 'reuse': reuse, 'steps': steps, 'peak_mib': mem.peak_bytes / 2**20,
                      'estimate_mib': c.memory_estimates[method].total / 2**20, 'tok_s': out.tokens_per_second,
                      'wall': time.perf_counter() - t}))
