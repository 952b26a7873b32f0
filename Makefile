# Two commands on a fresh machine: `make demo` and `make test`. Both bootstrap .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint unit bench-smoke test-engines clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: venv
	$(BIN)/headway demo

lint: venv
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts
	$(BIN)/mypy
	$(BIN)/lint-imports

unit: venv
	$(BIN)/python -m pytest -q -p no:cacheprovider

test: lint unit

# The `engine` tier: real engines (vLLM CPU, llama.cpp) behind the gateway. Installs
# vLLM into a cached venv, builds llama-server and writes the tiny model, all under
# ~/.cache/headway and reused on the next run (docs/real-engines.md).
test-engines: venv
	$(BIN)/python scripts/engines/headway_engines.py install-vllm
	$(BIN)/python scripts/engines/headway_engines.py build-llamacpp
	$(BIN)/python scripts/engines/headway_engines.py make-model
	$(BIN)/python scripts/engines/headway_engines.py make-gguf
	$(BIN)/python -m pytest -q -p no:cacheprovider -m engine tests/engines tests/benchmarks/test_bench_sim_vs_vllm_cpu.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
