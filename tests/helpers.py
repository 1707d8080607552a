"""Builders and helpers the tests share: the tiny model and tokenizer, run configs for them, and the
child process that the fault tests kill."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tiny_tokenizer(chat_template: str | None = CHATML, vocab_size: int = 512):
    """A byte-level BPE tokenizer trained on the built-in dataset's text; EOS doubles as pad."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from nbatune.data import builtin

    texts = []
    for rows in builtin.build(seed=0, train_size=300, val_size=20, test_size=20).values():
        texts += [f"{e.instruction}\n{e.input}\n{e.output}" for e in rows]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts + ["system user assistant concise NBA analytics assistant"], trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>")
    if chat_template:
        fast.chat_template = chat_template
    return fast


def tiny_llama(vocab_size: int, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=vocab_size, max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    return LlamaForCausalLM(cfg)


def answering_model(tiny_dir: Path, out: Path, steps: int = 250) -> Path:
    """Fit the random tiny model, with the project's own full fine-tuning, to the built-in data that
    ``tiny_config`` asks about, its validation and test questions included on purpose: it then answers every question
    with a non-empty line and gets some of the test right, so end-to-end tests score real answers (a random
    tiny model's greedy answers are all empty: it ends the line at once)."""
    import json

    from nbatune.compare import Comparison
    from nbatune.data import builtin

    d = tiny_config(tiny_dir, out)["data"]
    splits = builtin.build(d["seed"], d["train_size"], d["val_size"], d["test_size"])
    out.mkdir(parents=True, exist_ok=True)
    data = out / "fit.jsonl"
    data.write_text("".join(json.dumps(e.to_dict()) + "\n" for s in ("train", "validation", "test") for e in splits[s]))
    cfg = tiny_config(tiny_dir, out, methods=["full"], evaluate_base=False, run_name="fit",
                      **{"data.source": str(data), "data.format": "nba", "eval.retention": False,
                         "train.max_steps": steps, "train.learning_rate": {"full": 3e-3}, "train.batch_size": 16,
                         "train.curve_steps": 0, "train.logging_steps": 50, "eval.few_shot": 0})
    cmp = Comparison(cfg).setup()
    res = cmp._run_method("full", cmp.cfg.seed)
    assert res.status.value == "ok", res.error
    return Path(res.saved_path)


# tiny_config overrides for the answering model: room for a formula, and every technique scored as trained
# (tests/test_curve.py turns the learning-forgetting curve back on)
ANSWERING = {"eval.max_new_tokens": 32, "eval.curve_alphas": []}


def tiny_config(model_dir, tmp_path, **over) -> dict:
    """A run config for the tiny model: a few steps, small data, fp32 for exact comparisons."""
    cfg = {
        "mode": "test",
        "seed": 0,
        "lanes": 1,  # one process: tests monkeypatch it (the lanes have tests of their own)
        "output_dir": str(tmp_path / "runs"),
        "model": {"name_or_path": str(model_dir), "max_length": 160},
        "data": {"train_size": 96, "val_size": 16, "test_size": 24, "seed": 0},
        "train": {"max_steps": 4, "batch_size": 8, "precision": "fp32", "logging_steps": 1, "replay_share": 0.0,
                  "learning_rate": {"full": 1e-3, "lora": 5e-3, "qlora": 5e-3}},
        # every test measures its own base (a monkeypatched evaluation must not read another test's)
        "eval": {"max_new_tokens": 8, "batch_size": 16, "curve_examples": 8, "reuse_base": False},
    }
    for k, v in over.items():
        node = cfg
        *parents, leaf = k.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return cfg


def slow_child(cfg: dict, tmp_path: Path, delay: float, steps_file: Path | None = None) -> subprocess.Popen:
    """Run the comparison in another process with every training step slowed down by ``delay`` seconds
    (tests/slow_child.py); with ``steps_file``, a line is appended there after every finished step."""
    cfg_file = tmp_path / "child-config.json"
    cfg_file.write_text(json.dumps(cfg))
    args = [sys.executable, str(ROOT / "tests" / "slow_child.py"), str(cfg_file), str(delay)]
    return subprocess.Popen(args + ([str(steps_file)] if steps_file else []), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def kill_when(proc: subprocess.Popen, ready, timeout: float = 120, sig=signal.SIGKILL) -> None:
    """Send ``sig`` to ``proc`` as soon as ``ready()`` is true (or after ``timeout`` seconds), and reap it."""
    deadline = time.time() + timeout
    while time.time() < deadline and not ready():
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.wait(timeout=60)
