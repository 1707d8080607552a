"""Device and precision, resolved once at run start (never at import time)."""

from __future__ import annotations

import contextlib
import platform
from dataclasses import dataclass

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class PrecisionError(ValueError):
    pass


@dataclass(frozen=True)
class Runtime:
    device: str  # "cpu" | "cuda"
    precision: str  # "bf16" | "fp16" | "fp32"

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.precision]

    def autocast(self):
        """Mixed precision for forward passes; a no-op in fp32."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device, dtype=self.dtype)

    def describe(self) -> str:
        if self.device == "cuda":
            return f"cuda ({torch.cuda.get_device_name(0)}), {self.precision}"
        return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), {self.precision}"


def cpu_has_native_bf16() -> bool:
    """True when the CPU executes bf16 matmuls natively (AVX512-BF16 or AMX), where bf16 is ~2-4x fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_precision_advice(rt: Runtime) -> str:
    """A line for the run's log where the CPU has no native bf16 (an AVX2-only CPU): bf16 runs in software there, so
    the run trains and answers in fp32, about four times as long as on an AVX512-BF16 CPU (README)."""
    if rt.device != "cpu" or cpu_has_native_bf16():
        return ""
    if rt.precision == "bf16":
        return ("train.precision: bf16 on a CPU without AVX512-BF16 or AMX runs in software, hundreds of times slower "
                "than fp32 (0.3 against 144 GFLOP/s measured on an AVX2 EPYC); use 'auto' or 'fp32'")
    return ("this CPU has no native bf16 (no AVX512-BF16 or AMX): training and answering run in fp32, and the "
            "default run takes about four times as long as on a CPU that has it (42 against 11 minutes on 2 cores; "
            "README, 'On a CPU without bf16'); make quick, a smaller train.max_steps, or a GPU is shorter")


def resolve(device: str = "auto", precision: str = "auto") -> Runtime:
    """Pick the device and precision.

    Raises:
        PrecisionError: a precision the device cannot run, naming an alternative.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise PrecisionError("train.device: 'cuda' was asked for but no CUDA device is visible; use 'auto' or 'cpu'")
    if precision == "auto":
        if device == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "bf16" if cpu_has_native_bf16() else "fp32"
    if device == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise PrecisionError("train.precision: bf16 is not supported on this GPU; use 'fp16' or 'auto'")
    if device == "cpu" and precision == "fp16":
        raise PrecisionError("train.precision: fp16 training is not supported on CPU; use 'bf16' or 'fp32'")
    return Runtime(device, precision)
