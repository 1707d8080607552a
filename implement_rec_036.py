"""Facade from the design card: full fine-tuning, LoRA and QLoRA on the NBA instruction dataset.

    from implement_rec_036 import ImplementImplementFullFinetuningLoraAndQloraTechniques
    impl = ImplementImplementFullFinetuningLoraAndQloraTechniques(config="configs/quick.yaml")
    impl.setup()
    results = impl.execute()

The work is done by :class:`nbatune.compare.Comparison`; this class only keeps the card's names.
"""

from __future__ import annotations

from nbatune.compare import Comparison
from nbatune.config import ConfigError, RunConfig, load_config

__all__ = ["ImplementImplementFullFinetuningLoraAndQloraTechniques", "ConfigError", "RunConfig", "load_config"]


class ImplementImplementFullFinetuningLoraAndQloraTechniques(Comparison):
    """Compare full fine-tuning, LoRA and 4-bit QLoRA of one base model on the same data.

    Args:
        config: None (configs/default.yaml), a path to a YAML file, a dict of fields (validated:
            unknown keys and wrong types raise ``ConfigError`` naming the key and what is allowed), or a
            ``RunConfig``. Default: None.
        overrides: dotted ``key=value`` strings applied last, e.g. ``["train.max_steps=20"]``.

    ``setup()`` loads the dataset and resolves the base model; ``execute(methods=None)`` runs the
    untouched-base evaluation, then each technique, and returns the comparison dict (also written to
    ``<run_dir>/results.json`` with ``report.md``, ``report.html`` and plots).
    """
