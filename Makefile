# Two commands set everything up on a machine with Python 3.11:
#   make demo   create .venv and run the whole pipeline on a generated corpus
#   make test   create .venv, lint, and run the test suite
# TORCH picks the torch build (pip arguments, no quotes); the default is the CPU
# wheel. On a GPU machine: make test TORCH=torch==2.9.1  (see README, "Install").

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: env demo test lint clean

env: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and on its own: asked for through another package it would
	# resolve to a multi-GB CUDA build.
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[dev]" "einops>=0.7"
	# ResEnc-L needs only torch; --no-deps keeps timm/torchvision (and a second
	# torch) out. Primus-M users install the full set, see README. Last, so no
	# later install complains about the dependencies it leaves out on purpose.
	$(BIN)/python -m pip install -q --no-deps "dynamic-network-architectures>=0.4.4"
	touch $(STAMP)

demo: env
	$(BIN)/curate demo --out demo_out

lint: env
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest

clean:
	rm -rf $(VENV) demo_out .pytest_cache .ruff_cache
