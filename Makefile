# Two commands set everything up on a machine with Python 3.11:
#   make demo   create .venv and run the whole pipeline on a generated corpus
#   make test   create .venv, lint, build the docs and run the test suite
# TORCH picks the torch build (pip arguments), installed first and on its own.
# The default is PyPI's: on x86_64 Linux that is PyTorch's CUDA build (a few GB
# with its nvidia-* wheels), which also runs on a CPU, so a GPU machine and a
# CPU machine install the same line. A CPU-only machine may take the CPU build
# instead, to save the GBs (not tested here; see README, "Install"):
#   make env TORCH="torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cpu"

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
TORCH  ?= torch==2.14.1 torchvision==0.29.1
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: env demo test lint docs clean

env: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and on its own: the extras then find it installed and pull no
	# other build (the dev extra holds train and finetune: nnunetv2 and the networks).
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[dev]"
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
