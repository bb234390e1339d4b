"""The workload of the real-job benchmarks (prefix.py, ragged.py): a task's first prompts on a model."""

from __future__ import annotations

import argparse
from typing import Any

import torch

from sharpen.engine.generate import encode_prompts
from sharpen.engine.models import load_model
from sharpen.tasks import load_task


def parser(doc: str, prompts: int, n: int, tokens: int) -> argparse.ArgumentParser:
    """The options every real-job benchmark takes, with its own defaults."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--task", default="prontoqa")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--prompts", type=int, default=prompts)
    ap.add_argument("--n", type=int, default=n)
    ap.add_argument("--tokens", type=int, default=tokens)
    ap.add_argument("--threads", type=int, default=None)
    return ap


def load(args: argparse.Namespace) -> tuple[Any, Any, list[list[int]], list[str]]:
    """(model, task, prompt token ids, stop strings) of the parsed options; sets the torch threads."""
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model)
    task = load_task(args.task, data_dir=args.data_dir, limit=args.prompts)
    return model, task, encode_prompts(model, [it.prompt for it in task.items]), task.stops(False)
