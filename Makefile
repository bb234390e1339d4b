# Two commands that work on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of PyTorch; on a GPU machine install your CUDA build of torch first (see docs/gpu.md).
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test lint docs clean

$(BIN)/sharpen: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
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

clean:
	rm -rf $(VENV) runs .pytest_cache
