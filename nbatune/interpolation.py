"""Models between the base (alpha = 0) and the fine-tuned one (alpha = 1): the learning-forgetting curve.

Two ways, the registry says which (``Technique.curve``):

* ``scale``: a LoRA adapter's update is multiplied by alpha (every ``LoraLayer.scaling``, as PEFT's
  ``rescale_adapter_scale``): the weight change is alpha x B A, linear in alpha, and alpha = 0 adds
  exactly nothing.
* ``interpolate``: every trained parameter goes to ``lerp(initial, trained, alpha)``: for full fine-tuning
  base + alpha x (tuned - base); for an adapter whose initial state already leaves the base unchanged
  (DoRA's magnitude, IA3's ones, OFT's identity, PiSSA's split) its initial values, saved beside it.
  ``torch.lerp`` is exact at both ends.
"""

from __future__ import annotations

from pathlib import Path

import torch

INIT_FILE = "initial_state.safetensors"  # an interpolated adapter's values before training


def curve_kind(method: str, lora) -> str:
    """The registry's way for ``method``, except that a LoRA whose update does not start at zero (DoRA,
    PiSSA, OLoRA, a non-zero B) is interpolated: scaling its update to 0 would not give the base."""
    from . import techniques

    how = techniques.get(method).curve
    plain = not lora.use_dora and lora.init_lora_weights in (True, "gaussian")
    return how if how == "interpolate" or plain else "interpolate"


def trainable_state(model) -> dict[str, torch.Tensor]:
    """A CPU copy of every trainable parameter (before training: the path's start)."""
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


class AlphaPath:
    """Moves ``model`` along its path. ``initial``: ``trainable_state`` taken before training (``interpolate``
    only); the trained values are copied when the path is made, so alpha = 1 restores them exactly."""

    def __init__(self, model, how: str, initial: dict[str, torch.Tensor] | None = None):
        if how not in ("scale", "interpolate"):
            raise ValueError(f"unknown curve {how!r} (allowed: scale, interpolate)")
        self.model, self.how, self.alpha = model, how, 1.0
        if how == "scale":
            self.scalings = [(m, dict(m.scaling)) for m in _lora_layers(model)]
            if not self.scalings or any(len(getattr(m, "lora_magnitude_vector", {})) for m, _ in self.scalings):
                raise ValueError("curve 'scale' needs plain LoRA layers (a DoRA magnitude does not vanish at "
                                 "alpha = 0); use 'interpolate' for this technique")
        else:
            if initial is None:
                raise ValueError("curve 'interpolate' needs the parameters' initial values")
            params = dict(model.named_parameters())
            missing = [n for n in initial if n not in params]
            if missing:
                raise ValueError(f"initial state names parameters the model lacks: {missing[:3]}")
            self.pairs = [(params[n], initial[n], params[n].detach().to("cpu", copy=True)) for n in initial]

    @torch.no_grad()
    def set(self, alpha: float) -> None:
        if self.how == "scale":
            for module, scaling in self.scalings:
                for k, v in scaling.items():
                    module.scaling[k] = v * alpha
        else:
            for p, start, end in self.pairs:
                p.copy_(torch.lerp(start.float(), end.float(), float(alpha)).to(p.dtype))
        self.alpha = alpha


def _lora_layers(model):
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def save_initial(initial: dict[str, torch.Tensor], folder: str | Path) -> None:
    """An adapter's initial values, so that a reload can be moved along the same path (safetensors)."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in initial.items()}, str(Path(folder) / INIT_FILE))


def load_initial(folder: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = Path(folder) / INIT_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: this adapter cannot be moved along its curve (alpha = 1 only)")
    return load_file(str(path))
