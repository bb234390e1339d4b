"""sharpen: self-improvement of language models by sharpening toward their own most likely responses."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["load_model", "load_task", "prompt_token_ids", "sample", "greedy", "score", "Sample", "SharpenError",
           "__version__"]

from .errors import SharpenError

if TYPE_CHECKING:
    from .engine.generate import Sample, greedy, sample
    from .engine.models import load_model, prompt_token_ids
    from .engine.scoring import score
    from .tasks import load_task

_LAZY = {"load_model": "engine.models", "prompt_token_ids": "engine.models", "sample": "engine.generate",
         "greedy": "engine.generate", "Sample": "engine.generate", "score": "engine.scoring", "load_task": "tasks"}


def __getattr__(name: str) -> Any:
    # Lazy so that `sharpen --help` does not pay for importing torch and transformers.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(name)
