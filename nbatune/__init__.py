"""nbatune: fine-tune a causal LM three ways (full, LoRA, 4-bit QLoRA) on NBA analytics data and compare."""

from .config import ConfigError, RunConfig, load_config

__version__ = "0.1.0"
__all__ = ["Comparison", "ConfigError", "RunConfig", "load_config"]


def __getattr__(name):
    if name == "Comparison":  # lazy: importing the package must not import torch
        from .compare import Comparison

        return Comparison
    raise AttributeError(name)
