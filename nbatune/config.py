"""Configuration: one small dataclass per concern, loaded from YAML, a dict, or dotted overrides.

Every field has a type, a default and a one-line help string. Unknown keys and bad values are
collected and raised together as one ``ConfigError`` that names each field, its value and what is
allowed, before any model is loaded.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from . import techniques
from .decisions import KEEP_MEASURES

# TrainingArguments that nbatune sets from its own fields (train.trainer_args may not override them).
TRAINER_ARGS_OWNED = {"output_dir": "the run folder", "max_steps": "train.max_steps or train.epochs",
                      "per_device_train_batch_size": "train.batch_size", "gradient_accumulation_steps": "train.grad_accum",
                      "learning_rate": "train.learning_rate", "optim": "train.optimizer", "seed": "seed",
                      "bf16": "train.precision", "fp16": "train.precision", "use_cpu": "train.device",
                      "report_to": "train.report_to", "save_steps": "train.save_steps",
                      "gradient_checkpointing": "train.gradient_checkpointing"}
PER_METHOD_FIELDS = ("learning_rate", "optimizer", "gradient_checkpointing", "compile", "replay_share")  # tables by method
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """One or more invalid configuration values; the message lists every problem found."""


def _per_technique(attr: str, help: str):
    """A table keyed by technique whose defaults come from the registry when a config is made (so a
    technique registered later has its defaults too)."""
    return field(default_factory=lambda: {n: getattr(techniques.get(n), attr) for n in techniques.names()},
                 metadata={"help": help})


def _f(default, help: str, **kw):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class ModelConfig:
    name_or_path: str = _f("embedded:smollm2-135m-instruct",
                           "Base model: 'embedded:smollm2-135m-instruct', a local checkpoint directory, or a hub id.")
    revision: str | None = _f(None, "Hub revision (branch, tag or commit) when name_or_path is a hub id.")
    trust_remote_code: bool = _f(False, "Allow model code from the checkpoint to run. Off: only set it for code you trust.")
    cache_dir: str | None = _f(None, "Where the embedded model is converted to safetensors. Default: ~/.cache/nbatune.")
    system_prompt: str = _f("You are a concise NBA analytics assistant.",
                            "System message put in every chat. Short on purpose: every token costs training time.")
    max_length: int = _f(320, "Longest tokenized example; longer ones are truncated or dropped (data.overlong).")
    chat_template: str | None = _f(None, "Override the tokenizer's chat template: a Jinja template string, or the path "
                                         "of a file holding one. None: the tokenizer's own (ChatML if it has none).")


@dataclass
class DataConfig:
    seed: int = _f(42, "Builds the built-in dataset and carves a test split out of user data. Independent of the "
                       "top-level seed (training), so training can be repeated on a fixed test set.")
    source: str = _f("builtin", "'builtin' (the NBA dataset), or a JSON/JSONL/CSV/Parquet file, a saved datasets "
                                "directory, or a hub dataset id.")
    format: Literal["auto", "alpaca", "sharegpt", "messages", "prompt_completion", "nba"] = _f(
        "auto", "Row format of a user dataset; 'auto' detects it from the columns.")
    train_size: int = _f(3200, "Built-in dataset: training examples.")
    val_size: int = _f(160, "Built-in dataset: validation examples (eval loss and perplexity).")
    test_size: int = _f(320, "Built-in dataset: test examples (answer accuracy), a third of the computed ones in "
                             "the unseen format.")
    unseen_format: Literal["box", "prose", "table", "csv", "kv"] = _f(
        "kv", "Built-in dataset: the stat-line format held out of training and validation; test reports "
              "accuracy on it beside the seen formats.")
    test_fraction: float = _f(0.1, "User data without a test split: fraction carved out, deterministically from "
                                   "data.seed.")
    overlong: Literal["truncate", "drop"] = _f("truncate", "What to do with examples longer than model.max_length.")
    train_on: Literal["all_assistant_turns", "last_turn"] = _f(
        "all_assistant_turns", "Multi-turn data: learn every assistant turn (as TRL's assistant_only_loss), or only "
                               "the last. Prompts and user turns are never in the loss.")


@dataclass
class LoraSettings:
    r: int = _f(16, "LoRA rank.")
    alpha: int = _f(32, "LoRA alpha; the update is scaled by alpha / r (alpha / sqrt(r) with use_rslora).")
    dropout: float = _f(0.0, "Dropout on the LoRA input. 0 is faster and fine for short runs.")
    target_modules: str | list[str] = _f("all-linear", "Modules that get adapters; 'all-linear' = every linear "
                                                       "layer except the output head (QLoRA paper).")
    use_dora: bool = _f(False, "Weight-decomposed LoRA (DoRA), passed through to PEFT.")
    use_rslora: bool = _f(False, "Rank-stabilised scaling alpha / sqrt(r), passed through to PEFT.")
    init_lora_weights: bool | str = _f(True, "PEFT init: true, false, 'gaussian', 'pissa', 'pissa_niter_N', 'olora' "
                                             "or 'orthogonal'.")


@dataclass
class QuantSettings:
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = _f("nf4", "4-bit data type (NF4 in the QLoRA paper).")
    bnb_4bit_use_double_quant: bool = _f(True, "Quantize the quantization constants too (saves ~0.4 bit/param).")
    bnb_4bit_quant_storage: Literal["auto", "uint8", "bfloat16", "float16", "float32"] = _f(
        "auto", "The dtype 4-bit weights are packed in. auto: uint8, or the compute dtype when accelerate launches "
                "the run with FSDP or DeepSpeed (both need it; configs/accelerate/*-qlora.yaml).")
    upcast_frozen: bool = _f(False, "Under bf16: cast the 4-bit model's other frozen weights (embeddings, norms, the "
                                    "tied head) to fp32, as PEFT's prepare_model_for_kbit_training does, which makes "
                                    "the residual stream fp32. false: they stay in bf16 like LoRA's frozen base "
                                    "(torchtune's QLoRA is its LoRA recipe on a 4-bit base). fp16 always upcasts: "
                                    "fp16 norms can overflow. BENCHMARKS.md has the A-B.")


def frozen_in_fp32(upcast_frozen: bool, precision: str) -> bool:
    """Whether a 4-bit model's other frozen weights (embeddings, norms) stay in fp32, as PEFT's
    ``prepare_model_for_kbit_training`` leaves them: asked for (``quant.upcast_frozen``), or any precision but bf16
    (fp16 norms can overflow; in fp32 they are fp32 anyway). Loading and both memory estimates follow it."""
    return upcast_frozen or precision != "bf16"


@dataclass
class TrainConfig:
    max_steps: int = _f(240, "Optimizer steps per method. Same for every method: same data, same token budget.")
    epochs: float | None = _f(None, "Train this many passes over the training split instead of max_steps (the steps "
                                    "are worked out from the batch size, accumulation and processes).")
    repeats: int = _f(1, "Train every technique this many times, with seeds seed, seed+1, ..., on the same data and "
                         "test set; results keep every repeat and give the mean and spread. The first repeat's "
                         "model is the one saved.")
    batch_size: int = _f(4, "Examples per micro-batch.")
    grad_accum: int = _f(1, "Micro-batches per optimizer step.")
    learning_rate: dict[str, float] = _per_technique("learning_rate",
                                                     "Peak learning rate per method, from the sweep named in "
                                                     "learning_rate_source (adapters want a ~10-20x higher rate).")
    learning_rate_source: str = _f("bench/sweep-cpu-20261205-140steps*.json (full, LoRA: 140-step runs of 8 with "
                                   "replay, NBA and general validation, the operating-point policy); "
                                   "bench/probe-batch4-cpu-20261206.json (the batch of 4 and QLoRA's rate, on the "
                                   "development set; BENCHMARKS.md)", "Where the learning rates come from (the report prints "
                                                            "it): the sweep they were picked from.")
    optimizer: dict[str, str] = _per_technique("optimizer", "Optimizer per method: adamw_torch(_fused), adamw_8bit or "
                                                            "paged_adamw_8bit. Fused is the same AdamW in one kernel "
                                                            "(+9% full fine-tuning speed on CPU).")
    gradient_checkpointing: dict[str, bool] = _per_technique("gradient_checkpointing", "Recompute activations in "
                                                             "backward: less memory, ~30% slower.")
    compile: dict[str, bool] = _per_technique("compile", "torch.compile each decoder layer for training (inductor; "
                                              "needs a C++ compiler on CPU): fuses the casts, norms and activations "
                                              "around the matmuls. Compiling costs 6-30 s per technique before the "
                                              "first step (less with inductor's cache warm); BENCHMARKS.md has the "
                                              "measured trade.")
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = _f("cosine", "LR schedule.")
    warmup_ratio: float = _f(0.05, "Fraction of steps spent warming up the learning rate.")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm.")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = _f(
        "auto", "auto: bf16 on CUDA when supported (else fp16), bf16 autocast on CPUs with native bf16, else fp32.")
    device: Literal["auto", "cpu", "cuda"] = _f("auto", "auto: CUDA when available, else CPU.")
    batching: Literal["packed", "grouped", "padded"] = _f(
        "packed", "packed: random batches packed padding-free (examples never attend to each other); grouped: "
                  "batches of similar length (little padding, but batches of one task); padded: random, padded.")
    pack_row_tokens: int = _f(128, "packed: tokens per packed row (attention cost and memory grow with it; a longer "
                                        "example gets a row of its own; 512 pads less but was no faster in a whole "
                                        "fp32 run and held more memory, BENCHMARKS.md).")
    attention: Literal["auto", "lean_eager", "eager", "sdpa"] = _f(
        "auto", "Attention kernel while training (evaluation keeps the model's own, SDPA). auto: lean_eager on "
                "CPU (eager attention keeping only bf16 probabilities for backward: steps 7-19% faster than SDPA, "
                "BENCHMARKS.md), sdpa elsewhere.")
    lean_adapters: bool = _f(False, "LoRA layers train with nbatune's lean forward (nbatune.lora_kernel: the scaling "
                                    "on the rank-r product, the sum inside the up-projection's addmm) instead of "
                                    "PEFT's full-width multiply, add and 4-bit clone; evaluation runs PEFT's own. "
                                    "Off: 1-6% faster steps in A-B tests, not seen in a whole run, and bf16 rounds "
                                    "differently, so the answers change as with another seed (BENCHMARKS.md).")
    loss_chunk_tokens: int = _f(512, "Output head + loss over the answer tokens only, this many at a time, never "
                                     "holding all their logits (less memory, less head compute). 0: the model "
                                     "computes the logits of every answer column.")
    replay_share: float | dict[str, float] = _per_technique(
        "replay_share", "Share of training examples that replay the base model's own answers to general prompts "
        "(nbatune.replay; generated once per base model, cached), against forgetting: a table by technique (the "
        "registry's defaults for those it does not name), or one share for all. 0: off. 0.2 measured on LoRA: general "
        "retention 30% -> 60% (base 68%), NBA accuracy -2 points within noise (bench/replay-ab-cpu-20261202.json); "
        "QLoRA 0.4: its 4-bit base lost what the base's answers teach (bench/probe-qlora-replay-cpu-20261206.json).")
    replay_targets: Literal["tokens", "distribution"] = _f(
        "tokens", "What replay rows are trained toward. tokens: the base's greedy answer (cross-entropy). "
                  "distribution: the base's next-token distribution at each answer token (its top "
                  "nbatune.replay.TOP_K tokens, renormalised): a KL term toward the base on the replay prompts.")
    curve_steps: int = _f(60, "Learning curve: every this many steps, teacher-forced exact match on "
                              "eval.curve_examples validation rows (0: off).")
    early_stopping_patience: int = _f(0, "Stop a technique when the learning-curve score has not improved for this "
                                         "many measurements (every curve_steps); 0: off.")
    trainer_args: dict[str, Any] = _f({}, "Any other transformers TrainingArguments field, passed through (checked "
                                          "against the real dataclass), e.g. {dataloader_num_workers: 2}.")
    logging_steps: int = _f(5, "Log the training loss every this many steps (also the NaN check interval).")
    save_steps: int = _f(0, "Checkpoint every this many steps (0: only the final model).")
    report_to: list[str] = _f([], "Extra loggers, as in transformers: 'tensorboard', 'wandb'.")
    memory_check: Literal["refuse", "warn", "skip"] = _f(
        "refuse", "Before anything trains, estimate each technique's peak memory (nbatune.memory) and refuse, or "
                  "warn about, a run that will not fit memory_budget_gib.")
    memory_budget_gib: float | None = _f(None, "Memory a training process may use. None: what the device has free "
                                               "at setup (CUDA free memory, or the OS's available RAM).")

    def replay_share_for(self, method: str) -> float:
        """``method``'s replay share: ``replay_share`` itself, or its entry in a table by technique."""
        if isinstance(self.replay_share, dict):
            return float(self.replay_share.get(method, techniques.get(method).replay_share))
        return float(self.replay_share)

    def replays(self, methods) -> bool:
        """Whether any of ``methods`` trains with replay rows (then the base's answers are needed)."""
        return any(self.replay_share_for(m) > 0 for m in methods)


@dataclass
class EvalConfig:
    max_new_tokens: int = _f(96, "Most tokens generated per answer: each question gets its reference answer's "
                                 "length + 24 (the same for every model), capped here. The longest built-in answer, "
                                 "game score's formula, is 84 tokens.")
    stop_at_newline: bool = _f(True, "Answers are one line: stop generating at the first line break (every built-in "
                                     "answer is one line). Set false for multi-line answers.")
    few_shot: int = _f(3, "Few-shot baseline: solved training examples of the same category shown to the untouched "
                          "base before each question (0: no few-shot baseline).")
    retention: bool = _f(True, "Also score the general-knowledge retention set (forgetting) for the base and each "
                               "technique.")
    curve_examples: int = _f(32, "Validation rows scored for the learning curve (train.curve_steps).")
    batch_size: int = _f(64, "Answers decoded together (prompts are read evaluation.PREFILL_TOKENS at a time; 2-core "
                               "CPU, 320 test answers: 25 s at 64, 27 s at 32).")
    max_test_examples: int | None = _f(None, "Evaluate on at most this many test examples (None: all).")
    max_val_examples: int | None = _f(64, "Eval loss on at most this many validation examples (None: all).")
    num_samples: int = _f(6, "Side-by-side sample answers in the report.")
    curve_alphas: list[float] = _f([0.5, 0.75], "The learning-forgetting curve: besides the trained model "
                                   "(alpha = 1), score these points between the base (0) and it, on NBA and general "
                                   "validation (needs eval.retention). []: no curve, the trained model is the "
                                   "operating point. 0.25 is not in the default: it scored 0-0.6% NBA validation in "
                                   "every default-run technique, so the policy could only pick it as a model that "
                                   "learned nothing; its time pays for the larger general validation split.")
    curve_every_point: bool = _f(False, "Score every curve alpha. Default: alpha 1 and the largest alpha below it "
                                        "always; a lower alpha only while no scored point is above the strongest "
                                        "validation baseline and keeps eval.keep_general "
                                        "(decisions.score_curve: it could be chosen only by beating a larger alpha "
                                        "on NBA validation, which no measured curve did; about 16 s a point on 2 "
                                        "cores).")
    curve_refine: int = _f(1, "Midpoints scored between the largest curve alpha the policy's first rule takes and "
                              "the next larger scored alpha, which learned but missed eval.keep_general (each one "
                              "halves the gap; decisions.score_curve). 0: the grid only. One general validation "
                              "question had moved QLoRA a whole grid step, 0.75 -> 0.5 (STATUS.md).")
    keep_general: float = _f(0.9, "Operating-point policy: the highest NBA validation score among the points that "
                                  "keep at least this share of the base's general validation score and score above "
                                  "the strongest validation baseline (a point no better than a baseline learned "
                                  "nothing: the base again).")
    keep_measure: str = _f("score", "What eval.keep_general is a share of. score: the point's general validation "
                                    "accuracy over the base's (the issue's policy). known: the questions the base "
                                    "answers right that the point still answers right; gains on questions the base "
                                    "gets wrong do not offset lost facts. stratified: the score ratio with the "
                                    "questions the base answers right and wrong weighted as in validation's questions "
                                    "drawn like the test (decisions.general_stratified). On two default runs the score "
                                    "ratio on validation ran 3-12 points above the retention test's ratio for full "
                                    "fine-tuning and LoRA, the known share 2-16 below it, the stratified ratio +2 on "
                                    "average (-4 to +8) (BENCHMARKS.md).")
    fallback_margin: float = _f(0.25, "When no point keeps keep_general: the point that keeps the most while still "
                                      "this much above the strongest validation baseline.")
    fallback_share: float = _f(0.5, "When no point keeps keep_general or clears fallback_margin: the point that keeps "
                                    "the most among those whose lead over the strongest validation baseline is at least "
                                    "this share of the best point's lead. 1: the best NBA validation score, the point "
                                    "that forgets most (before 2026-12-07: QLoRA in the AVX2 default run at alpha 1, "
                                    "28.1% on test keeping 65% of the base's retention; at 0.5 it takes alpha 0.75, "
                                    "23.8% keeping 83%; bench/policy-last-resort-avx2-20261207.json).")
    reuse_base: bool = _f(True, "Read the base model's evaluation (test and retention answers, the curve's origin, "
                                "the few-shot baseline) from an earlier run whose code, model files, evaluation "
                                "settings, data, software and CPU were the same (nbatune.basecache; results say "
                                "base.reused_from); false: measure it again.")


@dataclass
class RunConfig:
    """The whole job. ``enabled`` and ``mode`` come from the design card: ``enabled: false`` makes
    ``execute()`` return without training; ``mode`` names the preset the run started from."""

    enabled: bool = _f(True, "Set false to make execute() a no-op that says so.")
    mode: Literal["production", "quick", "test"] = _f("production", "The preset this config is laid over, for a "
                                                                    "YAML file and a dict alike: production = the "
                                                                    "defaults here (= configs/default.yaml), quick = "
                                                                    "configs/quick.yaml on top, test = the defaults.")
    seed: int = _f(42, "Training seed: adapter initialisation and data order (the dataset has data.seed).")
    methods: list[str] = _f(list(techniques.DEFAULT_METHODS), "Which techniques to run, in order: any registered "
                                                              "technique (nbatune.techniques).")
    evaluate_base: bool = _f(True, "Also evaluate the untouched base model.")
    lanes: int = _f(0, "On a CPU, models (the base and each technique) run side by side in this many processes, the "
                       "cores split between them (nbatune.lanes): on 2 cores two one-core processes did about 1.4x "
                       "the work of one two-core process. 0: auto (2 on a CPU with 2+ cores when the two largest "
                       "memory estimates fit together; 1 on a GPU or under torchrun). 1: one after another, each "
                       "with every core (for timing one technique alone).")
    output_dir: str = _f("runs", "Each run writes to a new timestamped folder under this directory.")
    run_name: str | None = _f(None, "Folder name for this run (default: <mode>-<timestamp>). Must not exist yet.")
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    quant: QuantSettings = field(default_factory=QuantSettings)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---- loading ---------------------------------------------------------------------------------

def load_config(config: None | str | Path | dict | RunConfig = None, overrides: list[str] | None = None) -> RunConfig:
    """Build a validated ``RunConfig``.

    Args:
        config: None (the defaults, which configs/default.yaml spells out), a YAML path, a dict of (nested)
            fields, or a ``RunConfig``. ``mode`` (in a YAML file or a dict) picks the preset it is laid over.
        overrides: dotted ``key=value`` strings applied last, e.g. ``train.max_steps=10``.

    Raises:
        ConfigError: unknown keys, wrong types or out-of-range values, all listed at once.
        FileNotFoundError: the YAML path does not exist.
    """
    if isinstance(config, RunConfig):
        data = config.to_dict()
    elif isinstance(config, (str, Path)):
        path = Path(config)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path} (shipped configs: {', '.join(shipped_configs())})")
        own = yaml.safe_load(path.read_text()) or {}
        data = _merge(_preset_dict(own.get("mode", "production") if isinstance(own, dict) else "production"), own)
    elif isinstance(config, dict):
        data = _merge(_preset_dict(config.get("mode", "production")), config)
    elif config is None:
        data = _preset_dict("production")
    else:
        raise ConfigError(f"config must be None, a YAML path, a dict or a RunConfig, not {type(config).__name__}")
    data = copy.deepcopy(data)  # the overrides below must not write into the caller's dict (sections merge by reference)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, value = item.split("=", 1)
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a section")
        node[leaf] = yaml.safe_load(value)
    errors: list[str] = []
    cfg = _build(RunConfig, data, "", errors)
    if not errors:
        validate(cfg, errors)
    if errors:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(errors))
    return cfg


# The dataclass defaults are the production run (configs/default.yaml spells them out, and a test checks
# that the two agree); a preset file holds only its differences from them.
PRESET_FILES = {"production": None, "quick": "quick.yaml", "test": None}


def _preset_dict(mode: str) -> dict:
    name = PRESET_FILES.get(mode)
    path = CONFIG_DIR / name if name else None
    if path is None or not path.is_file():
        return {"mode": mode} if mode in PRESET_FILES else {}
    return yaml.safe_load(path.read_text()) or {}


def shipped_configs() -> list[str]:
    return sorted(str(p.relative_to(CONFIG_DIR.parent)) for p in CONFIG_DIR.glob("*.yaml"))


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _build(cls, data: Any, prefix: str, errors: list[str]):
    if not isinstance(data, dict):
        errors.append(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
        return cls()
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in data:
        if k not in names:
            errors.append(f"{prefix}{k}: unknown key (allowed: {', '.join(sorted(names))})")
    kwargs = {}
    defaults = cls()
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value, tp = data[f.name], hints[f.name]
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = _build(tp, value, f"{prefix}{f.name}.", errors)
        elif f.name in PER_METHOD_FIELDS and isinstance(value, dict):
            merged = {**getattr(defaults, f.name), **value}
            table = next(a for a in (typing.get_args(tp) if typing.get_origin(tp) is not dict else (tp,))
                         if typing.get_origin(a) is dict)  # replay_share: a table, or one share for all
            kwargs[f.name] = {m: _check(v, typing.get_args(table)[1], f"{prefix}{f.name}.{m}", errors)
                              for m, v in merged.items()}
            for m in value:
                if m not in techniques.names():
                    errors.append(f"{prefix}{f.name}.{m}: unknown method (allowed: {', '.join(techniques.names())})")
        else:
            kwargs[f.name] = _check(value, tp, prefix + f.name, errors)
    return cls(**kwargs)


def _check(value, tp, name: str, errors: list[str]):
    """Coerce ints to floats where a float is wanted; report anything that does not fit ``tp``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        if value not in args:
            errors.append(f"{name}: {value!r} is not allowed (allowed: {', '.join(map(repr, args))})")
        return value
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        for a in args:
            sub: list[str] = []
            out = _check(value, a, name, sub)
            if not sub:
                return out
        errors.append(f"{name}: {value!r} has the wrong type (expected {_tname(tp)})")
        return value
    if tp is type(None):
        if value is not None:
            errors.append(f"{name}: expected None")
        return value
    if origin is list:
        if not isinstance(value, list):
            errors.append(f"{name}: expected a list, got {value!r}")
            return value
        return [_check(v, args[0], f"{name}[{i}]", errors) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            errors.append(f"{name}: expected a mapping, got {value!r}")
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:
            return float(value)  # YAML reads "1e-4" as a string
        except ValueError:
            pass
    if tp in (int, float, str, bool) and (type(value) is not tp):
        errors.append(f"{name}: {value!r} has the wrong type (expected {tp.__name__})")
    return value


def _tname(tp) -> str:
    return " or ".join(getattr(a, "__name__", str(a)) for a in typing.get_args(tp)) or getattr(tp, "__name__", str(tp))


def validate(cfg: RunConfig, errors: list[str]) -> None:
    """Range and cross-field checks (types were checked while building)."""
    def need(cond: bool, msg: str):
        if not cond:
            errors.append(msg)

    for m in cfg.methods:
        why = techniques.refusal(m)
        need(why is None, f"methods: {why}")
        need(why is not None or m in techniques.names(),
             f"methods: {m!r} is not a method (allowed: {', '.join(techniques.names())})")
    need(len(set(cfg.methods)) == len(cfg.methods), f"methods: {cfg.methods} lists a method twice")
    need(cfg.lanes >= 0, f"lanes: {cfg.lanes} must be >= 0 (0: auto, 1: one model at a time)")
    t = cfg.train
    need(t.max_steps >= 1, f"train.max_steps: {t.max_steps} must be >= 1")
    need(t.repeats >= 1, f"train.repeats: {t.repeats} must be >= 1")
    need(t.epochs is None or t.epochs > 0, f"train.epochs: {t.epochs} must be a positive number, or null")
    need(t.early_stopping_patience >= 0, f"train.early_stopping_patience: {t.early_stopping_patience} must be >= 0")
    need(not t.early_stopping_patience or t.curve_steps > 0,
         "train.early_stopping_patience needs train.curve_steps > 0 (the measurement it watches)")
    if t.trainer_args:
        from dataclasses import fields as dc_fields

        from transformers import TrainingArguments

        known = {f.name for f in dc_fields(TrainingArguments)}
        owned = set(TRAINER_ARGS_OWNED)
        for k in t.trainer_args:
            need(k in known, f"train.trainer_args.{k}: not a transformers TrainingArguments field")
            need(k not in owned, f"train.trainer_args.{k}: set by nbatune from its own config; use "
                                 f"{TRAINER_ARGS_OWNED.get(k, 'the matching train.* field')}")
    need(t.curve_steps >= 0, f"train.curve_steps: {t.curve_steps} must be >= 0 (0: off)")
    shares = t.replay_share if isinstance(t.replay_share, dict) else {"": t.replay_share}
    for m, share in shares.items():  # unknown techniques in the table: refused where it is read (_build)
        need(isinstance(share, (int, float)) and not isinstance(share, bool) and 0 <= share <= 0.5,
             f"train.replay_share{'.' + m if m else ''}: {share!r} must be a number in [0, 0.5] (0: off)")
    need(t.batch_size >= 1, f"train.batch_size: {t.batch_size} must be >= 1")
    need(t.grad_accum >= 1, f"train.grad_accum: {t.grad_accum} must be >= 1")
    need(t.pack_row_tokens >= 1, f"train.pack_row_tokens: {t.pack_row_tokens} must be >= 1")
    need(0 <= t.warmup_ratio < 1, f"train.warmup_ratio: {t.warmup_ratio} must be in [0, 1)")
    need(t.logging_steps >= 1, f"train.logging_steps: {t.logging_steps} must be >= 1")
    need(t.save_steps >= 0, f"train.save_steps: {t.save_steps} must be >= 0")
    need(t.loss_chunk_tokens >= 0, f"train.loss_chunk_tokens: {t.loss_chunk_tokens} must be >= 0 (0: off)")
    need(t.memory_budget_gib is None or t.memory_budget_gib > 0,
         f"train.memory_budget_gib: {t.memory_budget_gib} must be a positive number of GiB, or null")
    for m, lr in t.learning_rate.items():
        need(isinstance(lr, float) and 0 < lr < float("inf"), f"train.learning_rate.{m}: {lr!r} must be a positive number")
    for m, opt in t.optimizer.items():
        need(opt in ("adamw_torch", "adamw_torch_fused", "adamw_8bit", "paged_adamw_8bit"),
             f"train.optimizer.{m}: {opt!r} is not allowed (allowed: 'adamw_torch', 'adamw_torch_fused', 'adamw_8bit', 'paged_adamw_8bit')")
    for r in t.report_to:
        need(r in ("tensorboard", "wandb", "mlflow", "none"),
             f"train.report_to: {r!r} is not allowed (allowed: 'tensorboard', 'wandb', 'mlflow')")
        module = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}.get(r)
        need(module is None or importlib.util.find_spec(module) is not None,
             f"train.report_to: {r!r} needs the {module} package: pip install 'nbatune[{r}]'")
    lo = cfg.lora
    need(lo.r >= 1, f"lora.r: {lo.r} must be >= 1")
    init = lo.init_lora_weights
    need(isinstance(init, bool) or init in ("gaussian", "pissa", "olora", "orthogonal") or
         str(init).startswith("pissa_niter_"),
         f"lora.init_lora_weights: {init!r} is not supported here (allowed: true, false, 'gaussian', 'pissa', "
         "'pissa_niter_N', 'olora', 'orthogonal'; 'loftq', 'eva' and 'corda' need extra PEFT configs that nbatune "
         "does not pass)")
    tpl = cfg.model.chat_template
    need(tpl is None or "{{" in tpl or "{%" in tpl or Path(tpl).expanduser().is_file(),
         f"model.chat_template: {tpl!r} is neither a Jinja template (no '{{{{' or '{{%' in it) nor an existing file")
    need(lo.alpha >= 1, f"lora.alpha: {lo.alpha} must be >= 1")
    need(0 <= lo.dropout < 1, f"lora.dropout: {lo.dropout} must be in [0, 1)")
    need(cfg.model.max_length >= 16, f"model.max_length: {cfg.model.max_length} must be >= 16")
    d = cfg.data
    for name in ("train_size", "val_size", "test_size"):
        need(getattr(d, name) >= 1, f"data.{name}: {getattr(d, name)} must be >= 1")
    need(0 < d.test_fraction < 0.5, f"data.test_fraction: {d.test_fraction} must be in (0, 0.5)")
    e = cfg.eval
    need(e.max_new_tokens >= 1, f"eval.max_new_tokens: {e.max_new_tokens} must be >= 1")
    need(e.batch_size >= 1, f"eval.batch_size: {e.batch_size} must be >= 1")
    need(e.few_shot >= 0, f"eval.few_shot: {e.few_shot} must be >= 0 (0: no few-shot baseline)")
    need(e.curve_examples >= 1, f"eval.curve_examples: {e.curve_examples} must be >= 1")
    need(isinstance(e.curve_refine, int) and e.curve_refine >= 0, f"eval.curve_refine: {e.curve_refine!r} must be an "
                                                                  "integer >= 0 (0: the grid only)")
    need(all(isinstance(a, (int, float)) and 0 <= a < 1 for a in e.curve_alphas),
         f"eval.curve_alphas: {e.curve_alphas} must be numbers in [0, 1) (alpha = 1, the trained model, is always "
         "scored)")
    need(0 < e.keep_general <= 1, f"eval.keep_general: {e.keep_general} must be in (0, 1]")
    need(0 < e.fallback_share <= 1, f"eval.fallback_share: {e.fallback_share} must be in (0, 1] (1: the best NBA "
                                    "validation score)")
    need(e.keep_measure in KEEP_MEASURES, f"eval.keep_measure: {e.keep_measure!r} must be one of "
                                          f"{', '.join(KEEP_MEASURES)}")
    if cfg.run_name is not None:
        need(bool(cfg.run_name) and "/" not in cfg.run_name and cfg.run_name not in (".", ".."),
             f"run_name: {cfg.run_name!r} must be a plain folder name")
