"""Evaluate a model, optionally with a LoRA adapter (`sharpen eval`): greedy and temperature-1 accuracy, and the
mean log pi_base of its responses, scored under the base model (adapter switched off, no second copy).

The likelihood lift of Table 1 compares log pi_base of the sharpened model's responses with log pi_base of the
base model's greedy responses: sharpening should move generation toward what the base model finds likely.

Steps: 1) check options (and the run directory, with --out), 2) load task, model and adapter, 3) respond chunk
by chunk (resumable in DIR/eval.jsonl), 4) summarize (DIR/eval.json).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import runs
from ..config import EvalConfig
from ..engine.models import load_model, prompt_token_ids
from ..metrics import label_summary, summarize_responses
from ..tasks import load_task
from ..train.lora import load_adapter
from .kit import eval_rows


def run_eval(cfg: EvalConfig) -> dict[str, Any]:
    """`sharpen eval`: load model (+ adapter) and task, respond, summarize; optionally write files."""
    cfg.validate()
    task = load_task(cfg.task, data_dir=cfg.data_dir, limit=cfg.limit, **cfg.task_options)
    out = Path(cfg.out) if cfg.out else None
    if out is not None:
        runs.open_run(out, "eval", [cfg])
    model = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    if cfg.adapter:
        model = load_adapter(model, cfg.adapter)
    ids = {it.id: prompt_token_ids(model, it.prompt, chat=cfg.chat) for it in task.items}
    rows = eval_rows(out / "eval.jsonl" if out else None, model, task, task.items, ids, cfg, cfg.seed,
                     progress=True, temperature=cfg.temperature)
    stats = summarize_responses(rows)
    labels = label_summary({it.id: it.answer for it in task.items},
                           {kind: [r for r in rows if r["kind"] == kind] for kind in stats}, task.labels)
    result = {"task": cfg.task, "model": cfg.model, "adapter": cfg.adapter, "options": cfg.options(), **stats,
              **({"labels": labels} if labels else {})}
    if out is not None:
        runs.atomic_write_json(out / "eval.json", result)
    return result
