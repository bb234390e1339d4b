"""Benchmark tasks: one module per task owns its data loading, prompt, answer extraction and grading."""

from __future__ import annotations

import importlib
import os

from ..errors import SharpenError
from .base import Item, Task
from .data import take

__all__ = ["TASKS", "VALIDATION", "Item", "Task", "load_task"]

# task name -> module; each module has `load(data_dir, split, limit, **options) -> Task`
_MODULES = {"gsm8k": "gsm8k", "math": "hendrycks_math", "prontoqa": "prontoqa", "mmlu": "mmlu", "game24": "game24",
            "arith": "arith"}
TASKS = tuple(_MODULES)
# Tasks with a validation split of their own (a disjoint generator); the others' validation prompts are train items.
VALIDATION = ("arith",)


def load_task(name: str, data_dir: str | os.PathLike | None = None, split: str = "test", limit: int | None = None,
              **options) -> Task:
    """A task with its items: the paper's evaluation subset (split="test") or training prompts (split="train").

    `data_dir` (else $SHARPEN_DATA_DIR) holds the benchmark files; without one, GSM8K, MATH and MMLU are
    downloaded from the Hugging Face hub (needs `datasets`), ProntoQA items are generated and Game of 24
    puzzles enumerated. `limit` keeps the first `limit` items. Options: mmlu `subject` (a name or a
    comma-separated list), prontoqa `hops` and `seed` (generated items only),
    arith `level` (a preset or a template) and `seed`; arith also has split="validation".
    """
    if name not in _MODULES:
        raise SharpenError(f"unknown task {name!r}: choose one of {', '.join(TASKS)}")
    take([], limit)  # refuses a bad limit before any data is read
    module = importlib.import_module(f".{_MODULES[name]}", __name__)
    return module.load(data_dir=data_dir, split=split, limit=limit, **options)
