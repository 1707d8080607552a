"""nbatune: fine-tune a causal LM three ways (full, LoRA, 4-bit QLoRA) on NBA analytics data and compare."""

import os

# transformers 5.25 kernelizes every model it loads with code fetched from the hub ("hub kernels") whenever the
# `kernels` package is installed: a download at load time (our runs are offline: on a CUDA machine every load
# failed with "not available in the local cache") and code we did not review. Off unless the user turns it on.
os.environ.setdefault("USE_HUB_KERNELS", "NO")

from .config import ConfigError, RunConfig, load_config

__version__ = "0.1.0"
__all__ = ["Comparison", "ConfigError", "RunConfig", "load_config"]


def __getattr__(name):
    if name == "Comparison":  # lazy: importing the package must not import torch
        from .compare import Comparison

        return Comparison
    raise AttributeError(name)
