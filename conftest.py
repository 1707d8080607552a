"""Shared fixtures: a tiny random Llama checkpoint with a tiny BPE tokenizer, built offline (the
builders live in tests/helpers.py, which test modules import)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.helpers import answering_model, tiny_llama, tiny_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _session_cache() -> None:
    """Point NBATUNE_CACHE (here and in the tests' child processes) at a fresh folder for the session, so that
    no test reads base results (nbatune.basecache) that another session or a user's run left; the converted
    embedded model and the replay answers are linked in from the real cache (their keys hold all they depend on)."""
    from nbatune.modeling import default_cache_dir

    real, fresh = default_cache_dir(), Path(tempfile.mkdtemp(prefix="nbatune-test-cache-"))
    for name in ("smollm2-135m-instruct", "replay"):
        if (real / name).is_dir():
            (fresh / name).symlink_to(real / name)
    os.environ["NBATUNE_CACHE"] = str(fresh)
    atexit.register(shutil.rmtree, fresh, ignore_errors=True)  # the links go, what they point at stays


_session_cache()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved tiny checkpoint (about 100k parameters) usable as ``model.name_or_path``."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tok = tiny_tokenizer()
    tiny_llama(len(tok)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def answering_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny checkpoint after 250 steps of fitting the data ``tiny_config`` asks about (about 16 s on 2
    cores): it answers every question with a non-empty line and gets 25-42% of the test right, and
    a few more steps of any technique change some answers. Use with ``eval.max_new_tokens: 32``
    (``ANSWERING``): formula answers do not fit in 8 tokens."""
    return answering_model(tiny_model_dir, tmp_path_factory.mktemp("answering"))
