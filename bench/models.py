"""Random-weight checkpoints built from a config: benchmarks need a model of the right shape, not
trained weights, and the GPU machine has no hub. They reuse the SmolLM2 tokenizer (the whole SmolLM2
family shares its 49,152-token vocabulary): from ``$NBATUNE_TOKENIZER`` (a folder of tokenizer files,
as bench/gpu_bundle.py writes) when set, else from the embedded model."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_LLAMA = dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=49152, tie_word_embeddings=True,
              hidden_act="silu", max_position_embeddings=8192, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
              pad_token_id=2)
SHAPES = {
    # the published SmolLM2 configs (HuggingFaceTB/SmolLM2-*-Instruct/config.json)
    "smollm2-1.7b": dict(_LLAMA, hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
                         num_attention_heads=32, num_key_value_heads=32, rope_theta=130000.0),
    "smollm2-360m": dict(_LLAMA, hidden_size=960, intermediate_size=2560, num_hidden_layers=32,
                         num_attention_heads=15, num_key_value_heads=5, rope_theta=100000.0),
    # small shapes for validating the memory estimator away from the embedded model's proportions
    "small-wide": dict(_LLAMA, hidden_size=384, intermediate_size=2048, num_hidden_layers=6,
                       num_attention_heads=6, num_key_value_heads=2),
    "small-mha": dict(_LLAMA, hidden_size=256, intermediate_size=1024, num_hidden_layers=8,
                      num_attention_heads=8, num_key_value_heads=8),
}


def random_checkpoint(shape: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Write a random-weight checkpoint of ``shape`` (a key of SHAPES) with the SmolLM2 tokenizer,
    once; return its folder."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from nbatune.config import ModelConfig
    from nbatune.modeling import load_tokenizer, resolve_model_path

    out = Path(out_dir) / shape
    if (out / "model.safetensors").is_file() or (out / "model.safetensors.index.json").is_file():
        return out
    torch.manual_seed(seed)
    fields = dict(SHAPES[shape])
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # random init of 1.7B is slow on CPU
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out)
    tokenizer_dir = os.environ.get("NBATUNE_TOKENIZER") or resolve_model_path(ModelConfig())
    load_tokenizer(tokenizer_dir, ModelConfig()).save_pretrained(out)
    return out
