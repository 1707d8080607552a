"""Shared fixtures: a tiny random Llama checkpoint with a tiny BPE tokenizer, built offline (the
builders live in tests/helpers.py, which test modules import)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import tiny_llama, tiny_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved tiny checkpoint (about 100k parameters) usable as ``model.name_or_path``."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tok = tiny_tokenizer()
    tiny_llama(len(tok)).save_pretrained(path)
    tok.save_pretrained(path)
    return path
