# Two commands that work on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of PyTorch; on a GPU machine install your CUDA build of torch first (see docs/gpu.md).
TORCH_SPEC ?= torch==2.13.0
# Every other package at the version the tests last passed with (`make lock` moves them forward); pip and the
# build backend (setuptools) included, so next year's fresh install is this year's. torch is not in it: it is
# TORCH_SPEC, or the CUDA build a GPU user brought.
LOCK := constraints.txt
PIP_LOCKED = $(BIN)/pip install -q -c $(LOCK) --build-constraint $(LOCK)

.PHONY: setup demo test lint docs lock clean

$(BIN)/sharpen: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c $(LOCK) --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)"
	$(PIP_LOCKED) -e ".[dev]"
	touch $(BIN)/sharpen

setup: $(BIN)/sharpen

demo: setup
	$(BIN)/sharpen demo

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check sharpen tests bench experiments docs

docs: setup
	$(BIN)/python docs/generate.py

# Move the lock forward: resolve pyproject.toml's ranges afresh (the newest allowed releases, the build backend
# within build-system.requires) in a new virtualenv, run the tests there against the new lock, and keep it only
# if they pass. Then review `git diff constraints.txt` and commit it.
LOCK_VENV := .venv-lock
BUILD_REQUIRES = $$($(PYTHON) -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['build-system']['requires'])")
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install -q --upgrade pip $(BUILD_REQUIRES)
	$(LOCK_VENV)/bin/pip install -q "$(TORCH_SPEC)"
	$(LOCK_VENV)/bin/pip install -q -e ".[dev]"
	( echo "# The lock: every dependency of '.[dev]' but torch at a version the tests passed with. Written by"; \
	  echo "# 'make lock' (resolve afresh, test, rewrite); 'make setup' installs with it as constraints."; \
	  $(LOCK_VENV)/bin/pip freeze --all --exclude-editable --exclude torch --exclude wheel ) > $(LOCK).new
	cp $(LOCK) $(LOCK).old && mv $(LOCK).new $(LOCK)
	$(LOCK_VENV)/bin/python -m pytest -q || { mv $(LOCK).old $(LOCK); echo "tests failed: $(LOCK) kept as it was"; exit 1; }
	rm -rf $(LOCK).old $(LOCK_VENV)
	@echo "$(LOCK) rewritten: review 'git diff $(LOCK)', then 'make clean test' installs from it"

clean:
	rm -rf $(VENV) $(LOCK_VENV) $(LOCK).new $(LOCK).old runs .pytest_cache
