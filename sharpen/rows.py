"""The sample row, built in one place, and grouping of rows by prompt.

A row is one response as stored in samples.jsonl, greedy.jsonl and the evaluation files: the raw sample
(text, token ids, summed temperature-1 log-prob of Eq. 2, finish reason) plus the task's extracted answer and
grade. Stages add fields of their own (`kind`, `logprob_base`) on top, never instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .engine.confidence import summarize_token_stats

if TYPE_CHECKING:  # reports read rows without loading the tasks
    from .tasks import Item, Task


def sample_rows(task: Task, item: Item, samples: Sequence[Any], start: int = 0) -> list[dict]:
    """Rows for `samples` (engine Samples, sample indices start, start + 1, ...) of one task item: extracted
    answer and grade, and the per-sample confidence summaries of the engine's per-token statistics
    (confidence.summarize_token_stats) when it recorded them."""
    rows = []
    for i, s in enumerate(samples, start):
        answer = task.extract(s.text)
        row = {"prompt_id": item.id, "index": i, "text": s.text, "token_ids": list(s.token_ids),
               "logprob": s.logprob, "num_tokens": len(s.token_ids), "finish_reason": s.finish_reason,
               "answer": answer, "correct": bool(task.grade(item, s.text))}
        st = getattr(s, "token_stats", None)
        if st:
            row.update(summarize_token_stats(st["entropy"], st["kl_uniform"], st["confidence"]))
        rows.append(row)
    return rows


def valid_target(row: Mapping[str, Any]) -> bool:
    """A response that ended (EOS or a stop string) and parses to an answer: a sound training target. A truncated
    or answer-less response would teach the model to ramble or to say nothing."""
    return row["finish_reason"] in ("eos", "stop") and row.get("answer") is not None


def group_by_prompt(rows: Iterable[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """Prompt id (as a string) -> its rows, in the order given."""
    out: dict[str, list[Any]] = {}
    for r in rows:
        out.setdefault(str(r["prompt_id"]), []).append(r)
    return out


def complete_pools(rows: Iterable[Mapping[str, Any]], n: int) -> tuple[dict[str, list[Any]], int]:
    """Each prompt's samples 0..n-1 in index order, for the prompts that have all n (the first row wins on a
    duplicate index; indices >= n are ignored), and how many prompts are incomplete."""
    by_prompt: dict[str, dict[int, Any]] = {}
    for r in rows:
        idx = int(r["index"])
        if 0 <= idx < n:
            by_prompt.setdefault(str(r["prompt_id"]), {}).setdefault(idx, r)
    pools = {pid: [got[i] for i in range(n)] for pid, got in by_prompt.items() if len(got) == n}
    return pools, len(by_prompt) - len(pools)


def finite_mean(xs: Iterable[float | None]) -> float | None:
    """Mean of the finite values (a -inf log-prob would swamp it); None when there are none."""
    vals = [float(x) for x in xs if x is not None and math.isfinite(float(x))]
    return sum(vals) / len(vals) if vals else None
