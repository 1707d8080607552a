"""Write a llama-architecture model and its byte-level BPE tokenizer as one GGUF file (f16 or q8_0),
for llama.cpp and Ollama users, with the ``gguf`` package.

The layout follows llama.cpp's own converter: llama tensor names, the query and key projections
permuted into its rotary layout (transformers' GGUF loader permutes them back), one-dimensional
tensors (norms) kept in f32, no ``output.weight`` when the head is tied to the embeddings. The
round trip through transformers' GGUF loader is tested (tests/test_artifacts.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

QTYPES = ("f16", "q8_0")


class GGUFExportError(ValueError):
    """The model or tokenizer cannot be written as GGUF; the message says why and what to use instead."""


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's half-split rotary layout -> llama.cpp's interleaved one, per head (as convert_hf_to_gguf.py)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _rope_theta(config) -> float:
    """The rotary base; anything but plain rotary (scaled variants) is refused."""
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if (params.get("rope_type") or "default") != "default":
        raise GGUFExportError(f"GGUF export: rope scaling {params.get('rope_type')!r} is not supported; export the "
                              "safetensors checkpoint and convert it with llama.cpp's convert_hf_to_gguf.py")
    return float(params.get("rope_theta") or getattr(config, "rope_theta", None) or 10000.0)


def _tensors(model) -> list[tuple[str, np.ndarray]]:
    """(gguf name, fp32 array in PyTorch layout) for every weight."""
    cfg = model.config
    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    out = []
    for key, value in model.state_dict().items():
        w = value.detach().to(torch.float32).cpu().numpy()
        if key == "model.embed_tokens.weight":
            out.append(("token_embd.weight", w))
        elif key == "model.norm.weight":
            out.append(("output_norm.weight", w))
        elif key == "lm_head.weight":
            if not cfg.tie_word_embeddings:
                out.append(("output.weight", w))
        elif key.startswith("model.layers.") and key.endswith(".weight"):
            layer, rest = key[len("model.layers."):].split(".", 1)
            part = names.get(rest[: -len(".weight")])
            if part is None:
                raise GGUFExportError(f"GGUF export: unexpected weight {key} for a llama model")
            if part == "attn_q":
                w = _permute(w, n_head)
            elif part == "attn_k":
                w = _permute(w, n_kv)
            out.append((f"blk.{layer}.{part}.weight", w))
        else:
            raise GGUFExportError(f"GGUF export: unexpected weight {key} (biases are not written) for a llama model")
    return out


def _tokenizer_fields(writer, tok, pre: str) -> None:
    import gguf

    spec = json.loads(tok.backend_tokenizer.to_str())
    model, decoder = spec.get("model") or {}, spec.get("decoder") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or decoder.get("type") != "ByteLevel":
        raise GGUFExportError("GGUF export supports byte-level BPE tokenizers (GPT-2 style, as SmolLM2 and Llama 3); "
                              "this one is not: convert with llama.cpp's convert_hf_to_gguf.py instead")
    n = len(tok)
    special = {i for i, t in tok.added_tokens_decoder.items() if t.special}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tok.convert_ids_to_tokens(list(range(n))))
    writer.add_token_types([gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(n)])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])])
    for name, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                      ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):
        tid = getattr(tok, f"{name}_token_id", None)
        if tid is not None:
            add(int(tid))
    writer.add_add_bos_token(bool(getattr(tok, "add_bos_token", False)))
    if tok.chat_template:
        writer.add_chat_template(tok.chat_template)


def write_gguf(model, tokenizer, path: str | Path, qtype: str = "q8_0", name: str = "", pre: str = "gpt-2") -> Path:
    """Write ``model`` (a ``LlamaForCausalLM``, weights in any float dtype) and ``tokenizer`` to ``path``.

    Args:
        qtype: ``f16`` (weights as f16) or ``q8_0`` (llama.cpp's 8-bit blocks of 32; a matrix whose rows are
            not a multiple of 32 stays f16).
        pre: llama.cpp's pre-tokenizer name (``tokenizer.ggml.pre``); ``gpt-2`` for plain byte-level BPE (llama.cpp
            refuses ``gpt2``, the tokenizer *model*'s name: found by loading an export in llama.cpp).

    Raises:
        GGUFExportError: not a llama model, a tokenizer that is not byte-level BPE, rope scaling, or an
            unknown ``qtype``.
    """
    import gguf

    if qtype not in QTYPES:
        raise GGUFExportError(f"GGUF export: qtype {qtype!r} is not one of {', '.join(QTYPES)}")
    cfg = model.config
    if cfg.model_type != "llama":
        raise GGUFExportError(f"GGUF export supports llama-architecture models (SmolLM2, Llama); this is "
                              f"{cfg.model_type!r}: export the safetensors checkpoint and convert it with llama.cpp's "
                              "convert_hf_to_gguf.py")
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name or Path(str(cfg.name_or_path or "model")).name)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_freq_base(_rope_theta(cfg))
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    ftype = gguf.LlamaFileType.MOSTLY_Q8_0 if qtype == "q8_0" else gguf.LlamaFileType.MOSTLY_F16
    writer.add_file_type(ftype)
    _tokenizer_fields(writer, tokenizer, pre)
    for tname, w in _tensors(model):
        if w.ndim == 1:
            writer.add_tensor(tname, w.astype(np.float32))
        elif qtype == "q8_0" and w.shape[-1] % 32 == 0:
            q = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(tname, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(tname, w.astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=True)
    writer.close()
    return path


def pre_tokenizer_name(name_or_path: str) -> str:
    """llama.cpp's pre-tokenizer name for a base model: carried over from the embedded model's own GGUF
    (``smollm`` for SmolLM2's digit splitting), ``gpt-2`` (plain byte-level BPE) otherwise."""
    import gguf

    from .modeling import EMBEDDED, embedded_gguf

    if name_or_path not in EMBEDDED:
        return "gpt-2"
    field = gguf.GGUFReader(str(embedded_gguf(name_or_path))).fields.get("tokenizer.ggml.pre")
    return field.contents() if field is not None else "gpt-2"


# Ollama's Go template for ChatML (``<|im_start|>role\ncontent<|im_end|>\n``), the chat format of SmolLM2, Qwen
# and others; its messages loop renders what the tokenizer's Jinja template renders (tests/test_artifacts.py).
CHATML_TEMPLATE = (
    "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n")


def ollama_modelfile(gguf_name: str, tokenizer, system_prompt: str, stop_at_newline: bool = True) -> str:
    """An Ollama ``Modelfile`` for a GGUF written by ``write_gguf``: ``FROM`` the file beside it, the chat
    ``TEMPLATE``, the run's ``SYSTEM`` prompt, the end-of-turn token as a stop sequence, and greedy decoding
    (temperature 0), as the answers were scored.

    Raises:
        GGUFExportError: the tokenizer's chat template is not ChatML (no Ollama template is derived for it).
    """
    template = tokenizer.chat_template or ""
    if "<|im_start|>" not in template or "<|im_end|>" not in template:
        raise GGUFExportError("Ollama Modelfile: only ChatML chat templates (<|im_start|> ... <|im_end|>) are "
                              "translated; write the TEMPLATE for this model by hand (the GGUF itself is fine)")
    lines = ["# Ollama: ollama create my-model -f Modelfile && ollama run my-model",
             f"FROM ./{gguf_name}", f'TEMPLATE """{CHATML_TEMPLATE}"""']
    if system_prompt:
        lines.append(f'SYSTEM """{system_prompt}"""')
    lines += ['PARAMETER stop "<|im_end|>"', 'PARAMETER stop "<|im_start|>"', "PARAMETER temperature 0"]
    if stop_at_newline:
        lines.insert(1, "# Scored answers are one line (eval.stop_at_newline): read the first line of a reply.")
    return "\n".join(lines) + "\n"
