# Two commands on a fresh machine: `make demo` and `make test`. Everything they need is installed here.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# The CPU build of PyTorch; installed first so nothing pulls the multi-GB CUDA wheels.
# Elsewhere add e.g. TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu".
TORCH_SPEC     ?= torch==2.13.0
TORCH_PIP_ARGS ?=
PYTEST_ARGS    ?=

.PHONY: install test demo clean bench trt-conformance

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[train,dev]"
	touch $(STAMP)

install: $(STAMP)

# ruff (lint + format check) first: a style slip fails `make test` (and so CI) before the suite runs.
test: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# edgecnn's TensorRT calls against the real bindings of each supported release (no GPU; part of `make test`)
trt-conformance: $(STAMP)
	$(BIN)/python -m pytest -q tests/test_trt_conformance.py

demo: $(STAMP)
	$(BIN)/python examples/demo.py

clean:
	rm -rf $(VENV) .cache .pytest_cache demo-out
