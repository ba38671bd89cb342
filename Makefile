# Two commands set everything up on a machine with Python 3.11:
#   make demo   create .venv and run the whole pipeline on a generated corpus
#   make test   create .venv, lint, build the docs and run the test suite
# TORCH picks the torch build (pip arguments). The default is the CPU build from
# PyTorch's CPU wheel index: PyPI's Linux torch is a multi-GB CUDA build. On a
# GPU machine take the CUDA build (and torchvision, for Primus-M) from PyPI:
#   make env TORCH="torch==2.13.0 torchvision"     (see README, "Install")

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
TORCH  ?= torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: env demo test lint docs clean

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

# The documentation site, into site/; --strict fails on a broken link or page.
# NO_MKDOCS_2_WARNING: mkdocs-material's banner about its successor, not a finding.
docs: env
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir site

test: lint docs
	$(BIN)/pytest

clean:
	rm -rf $(VENV) demo_out site .pytest_cache .ruff_cache
