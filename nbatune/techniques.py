"""The technique registry: one small definition per fine-tuning technique, and the only module that names
one. Every other module asks the registry: how the model is built from the base, what trains, how it is
saved and reloaded exactly as it was scored, how it is merged for export, what its precision is, how the
memory estimator counts it, its default learning rate and optimizer, and what to try when it runs out
of memory.

Adding a technique is one ``register(Technique(...))`` plus its name in a config's ``methods:``
(IMPLEMENTATION_GUIDE.md shows a worked example; a test registers one from a test file).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal


@dataclass(frozen=True)
class Technique:
    name: str  # as users type it in `methods:`
    label: str  # in tables and sentences
    precision: str  # the report's sentence: how the weights are stored and computed
    color: str  # in every plot
    adapter: bool  # trains a PEFT adapter on a frozen base (saved alone) instead of the whole model
    quantized: bool = False  # the frozen base is loaded in 4 bits (bitsandbytes NF4/FP4)
    learning_rate: float = 2e-4
    optimizer: str = "adamw_torch_fused"
    gradient_checkpointing: bool = False
    compile: bool = False  # torch.compile each decoder layer for training (train.compile)
    replay_share: float = 0.2  # train.replay_share: the base's own answers to general prompts, against forgetting
    # PEFT config from the run's LoraSettings (adapters only); None: the run's LoRA settings as they are
    peft_config: Callable | None = None
    # PEFT's input cast of each adapter undone by autocast anyway: skip it (an unquantized bf16 base only)
    skip_input_casts: bool = False
    memory_kind: Literal["whole", "adapter", "adapter_4bit"] = "whole"  # which of the estimator's fitted models counts it
    oom_tip: str = ""  # what else to try when it does not fit, after batch size and checkpointing
    # the learning-forgetting curve (nbatune.interpolation): "scale" a LoRA update by alpha, or "interpolate"
    # every trained parameter between its initial and trained value
    curve: Literal["scale", "interpolate"] = "interpolate"
    # called on the loaded model before training (e.g. freeze layers); returns the model
    prepare: Callable | None = field(default=None, compare=False)
    # the adapter's initialisation rewrites the base weights (PiSSA puts the top singular directions in the
    # adapter and leaves the residual in the base): it is saved as the plain LoRA it amounts to on the untouched
    # base (PEFT's conversion, rank 2r), and that reloaded model is the one scored, so what ships is what scored
    converts_to_lora: bool = False

    @property
    def saved_folder(self) -> str:
        """Where a run keeps it, under ``<run>/<name>/``: a standalone model or an adapter."""
        return "adapter" if self.adapter else "model"

    @property
    def merged_folder(self) -> str:
        return "merged" if self.adapter else "export-{dtype}"


BASE = "base"  # the untouched base model: evaluated, never trained, not a technique
BASE_LABEL = "base (untouched)"
BASE_COLOR = "#888888"
_REGISTRY: dict[str, Technique] = {}


def register(technique: Technique) -> Technique:
    """Add a technique (``unregister`` first to redefine one)."""
    if technique.name == BASE or technique.name in _REGISTRY:
        raise ValueError(f"technique {technique.name!r} is already registered")
    _REGISTRY[technique.name] = technique
    return technique


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def get(name: str) -> Technique:
    if name not in _REGISTRY:
        raise KeyError(f"{name!r} is not a registered technique (registered: {', '.join(_REGISTRY)})")
    return _REGISTRY[name]


def names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def label(name: str) -> str:
    return BASE_LABEL if name == BASE else get(name).label if name in _REGISTRY else name


def color(name: str) -> str:
    return BASE_COLOR if name == BASE else get(name).color if name in _REGISTRY else "#444444"


def any_quantized(methods) -> bool:
    return any(get(m).quantized for m in methods if m in _REGISTRY)


def lora_config(lora, **extra):
    """The run's LoRA settings (``lora:`` in the config) as a PEFT LoraConfig, with ``extra`` on top."""
    from peft import LoraConfig

    return LoraConfig(**{"r": lora.r, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout,
                         "target_modules": lora.target_modules, "use_dora": lora.use_dora,
                         "use_rslora": lora.use_rslora, "init_lora_weights": lora.init_lora_weights,
                         "bias": "none", "task_type": "CAUSAL_LM", **extra})


def _peft(name: str, **kwargs):
    """A PEFT method's own config with PEFT's default target modules for the architecture."""
    def build(lora):
        import peft

        return getattr(peft, name)(task_type="CAUSAL_LM", **kwargs)
    return build


def _top_layers(n: int):
    """LLaMA-Factory's ``freeze`` (its default ``freeze_trainable_layers: 2``): the whole model is saved, only the
    top ``n`` decoder layers train."""
    def prepare(model):
        layers = model.model.layers
        model.requires_grad_(False)
        for layer in layers[-n:]:
            layer.requires_grad_(True)
        return model
    return prepare


FOUR_BIT_REFUSALS = {
    # name of the technique -> why its 4-bit variant ("q" + name) cannot run
    "full": "4-bit weights cannot be trained (bitsandbytes stores them packed and frozen); use qlora",
    "freeze": "4-bit weights cannot be trained (bitsandbytes stores them packed and frozen); use qlora",
    "vera": "PEFT 0.21 has no bitsandbytes 4-bit layer for VeRA (peft/tuners/vera has no bnb module)",
    "oft": "PEFT 0.21 has no bitsandbytes 4-bit layer for OFT (peft/tuners/oft has no bnb module)",
    "pissa": "PiSSA's SVD needs the unquantized weights and PEFT's conversion back to LoRA is inexact on a 4-bit base "
             "(Quant(W_res) + AB differs from Quant(W) + delta); use pissa on the bf16 base, or qlora",
}


def refusal(name: str) -> str | None:
    """Why ``name`` cannot run, when it is the 4-bit variant of a technique that cannot have one."""
    if name not in _REGISTRY and name.startswith("q") and name[1:] in FOUR_BIT_REFUSALS:
        return f"{name!r} (the 4-bit variant of {name[1:]!r}) cannot run: {FOUR_BIT_REFUSALS[name[1:]]}"
    return None


ADAPTER_PRECISION = "frozen base stored in bf16, fp32 adapters"
register(Technique(
    name="full", label="full fine-tuning", color="#1f77b4", adapter=False, learning_rate=1e-4,
    precision="fp32 master weights under bf16 autocast", memory_kind="whole",
    oom_tip="lora or qlora instead of full fine-tuning, or train.optimizer.full: adamw_8bit (optimizer states 4x "
            "smaller)"))
register(Technique(
    name="lora", label="LoRA", color="#2ca02c", adapter=True, learning_rate=1e-3, skip_input_casts=True, curve="scale",
    precision=ADAPTER_PRECISION, memory_kind="adapter",
    oom_tip="qlora (a 4-bit base takes about a quarter of the weight memory)"))
register(Technique(
    name="qlora", label="QLoRA (4-bit)", color="#d62728", adapter=True, quantized=True, learning_rate=3e-3, curve="scale",
    # twice LoRA's replay: its 4-bit base answers 39% of general validation where the base answers 55%, and the
    # base's own answers teach some of it back (bench/probe-qlora-replay-cpu-20261206.json)
    replay_share=0.4, skip_input_casts=True, precision="frozen base in 4-bit NF4 with bf16 compute, its other weights in bf16 "
    "(quant.upcast_frozen), fp32 adapters", memory_kind="adapter_4bit"))
DEFAULT_METHODS = ("full", "lora", "qlora")  # the design card's three, in its order

# More of PEFT's methods, and LLaMA-Factory's freeze. Their learning rates are LoRA's (or the method
# paper's) until `bench/sweep.py --methods NAME` has measured one; STATUS.md says which were swept.
register(Technique(
    name="dora", label="DoRA", color="#9467bd", adapter=True, learning_rate=2e-3,
    precision="frozen base stored in bf16, fp32 adapters and magnitudes", memory_kind="adapter",
    peft_config=lambda lora: lora_config(lora, use_dora=True)))
register(Technique(
    name="rslora", label="rsLoRA", color="#8c564b", adapter=True, learning_rate=2e-3, skip_input_casts=True,
    curve="scale",
    precision=ADAPTER_PRECISION + " (scaled alpha / sqrt(r))", memory_kind="adapter",
    peft_config=lambda lora: lora_config(lora, use_rslora=True)))
register(Technique(
    name="ia3", label="IA3", color="#e377c2", adapter=True, learning_rate=1e-2,
    precision="frozen base stored in bf16, fp32 scaling vectors (PEFT's default modules)", memory_kind="adapter",
    peft_config=_peft("IA3Config")))
register(Technique(
    name="vera", label="VeRA", color="#7f7f7f", adapter=True, learning_rate=1e-2,
    precision="frozen base stored in bf16, shared frozen random projections, fp32 scaling vectors (rank 256, "
              "PEFT's default modules)", memory_kind="adapter",
    peft_config=_peft("VeraConfig", r=256)))
register(Technique(
    name="oft", label="OFT", color="#bcbd22", adapter=True, learning_rate=2e-3,
    precision="frozen base stored in bf16, fp32 orthogonal blocks of 32 (PEFT's default modules)",
    memory_kind="adapter", peft_config=_peft("OFTConfig", r=0, oft_block_size=32)))
register(Technique(
    name="qdora", label="QDoRA (4-bit)", color="#17becf", adapter=True, quantized=True, learning_rate=4e-3,
    precision="frozen base in 4-bit NF4 with bf16 compute, fp32 adapters and magnitudes", memory_kind="adapter_4bit",
    peft_config=lambda lora: lora_config(lora, use_dora=True)))
register(Technique(
    name="pissa", label="PiSSA", color="#ff7f0e", adapter=True, learning_rate=2e-3, skip_input_casts=True,
    curve="scale", converts_to_lora=True,
    precision=ADAPTER_PRECISION + " (PiSSA-initialised: the top singular directions train; saved and scored as the "
                                  "equivalent rank-2r LoRA on the untouched base)", memory_kind="adapter",
    peft_config=lambda lora: lora_config(lora, init_lora_weights="pissa")))
register(Technique(
    name="freeze", label="freeze (top 2 layers)", color="#aec7e8", adapter=False, learning_rate=2e-4,
    precision="fp32 master weights under bf16 autocast, only the top 2 decoder layers train", memory_kind="whole",
    prepare=_top_layers(2)))
