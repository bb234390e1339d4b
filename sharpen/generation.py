"""Sampling into run directories: the one resumable chunked loop, graded responses and their log pi_base.

Every stage that samples goes through `run_chunked`: best-of-N's greedy and N samples (`stages.kit.run_pool`,
which the sft, dpo and xpo stages also use for their base samples), held-out evaluations (`stages.kit.eval_rows`)
and XPO's per-round samples. Items are processed in fixed chunks (by default about CALL_RESPONSES responses per
engine call), the unit of resume: a re-run skips finished chunks and redoes a chunk whose rows are incomplete with
the same composition, so an interrupted run ends with the same files as an uninterrupted one. Nothing here knows
a stage's config: the stages pass their options in (`stages.kit`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from . import runs
from .engine.arch import causal_lm
from .engine.generate import greedy, sample_with_greedy
from .engine.models import Model, sampling_dtype
from .engine.scoring import score
from .progress import bar
from .rows import group_by_prompt, sample_rows
from .tasks import Item, Task

# Responses per engine call when --chunk is not given. Rows that finish are refilled only from the samples of the
# same call, so a call needs many more pending responses than decode rows (up to 256) or its tail runs nearly empty.
CALL_RESPONSES = 1024

Draw = Callable[[list[Any]], list[dict]]


def chunk_size(chunk: int | None, per_prompt: int) -> int:
    """Prompts per engine call: --chunk, or enough prompts for CALL_RESPONSES responses."""
    return chunk if chunk else max(1, -(-CALL_RESPONSES // per_prompt))


def _item_id(item: Any) -> str:
    return item.id


def complete_prompts(rows: Iterable[dict], per_prompt: int) -> set[str]:
    """Prompt ids whose rows are all there: `per_prompt` of them, or, for a prompt sampled adaptively, as many as
    its rows' `drawn` says it was given."""
    return {pid for pid, rs in group_by_prompt(rows).items() if len(rs) == rs[0].get("drawn", per_prompt)}


def run_chunked(path: Path | None, items: Sequence[Any], per_prompt: int, draw: Draw, *, chunk: int | None,
                label: str, progress: bool, key: Callable[[Any], str] = _item_id,
                mine: Callable[[dict], bool] | None = None, earlier: Callable[[dict], bool] | None = None
                ) -> list[dict]:
    """The rows of `path` (a JSONL file; None keeps nothing on disk) for `items`, `per_prompt` rows each.

    `draw(chunk of items)` returns the chunk's new rows (each with its `prompt_id`), in file order. Rows of
    prompts left incomplete by a crash are dropped and their whole chunk is redone; rows of complete prompts in a
    redone chunk are not written twice. A file shared with other calls (XPO's rounds): `mine(row)` marks this
    call's rows, `earlier(row)` rows kept as they are; any other row is dropped. Returns the earlier rows and
    this call's, in file order.
    """
    wanted = {key(it) for it in items}
    is_mine = mine or (lambda r: True)
    kept_other = earlier or (lambda r: False)
    rows = runs.load_jsonl(path) if path is not None else []
    done = complete_prompts((r for r in rows if is_mine(r)), per_prompt)
    if path is not None:
        rows = runs.repair_jsonl(path, keep=lambda r: kept_other(r) if not is_mine(r) else
                                 r["prompt_id"] in done and r["prompt_id"] in wanted)
    done = complete_prompts((r for r in rows if is_mine(r)), per_prompt)
    size = chunk_size(chunk, per_prompt)
    chunks = [list(items[i:i + size]) for i in range(0, len(items), size)]
    todo = [c for c in chunks if any(key(it) not in done for it in c)]
    finished = len(items) - sum(len(c) for c in todo)
    if finished and progress and path is not None:
        print(f"{label}: resuming, {finished} of {len(items)} prompts already in {path.name}", file=sys.stderr)
    # The bar closes (ends its line) before an error reaches the CLI, so the error gets a line of its own.
    # A draw with `many` (scale-out workers) takes every chunk at once and yields (chunk index, rows) in order.
    many = getattr(draw, "many", None)
    stream = many(todo) if many is not None and todo else ((i, draw(c)) for i, c in enumerate(todo))
    with bar(total=len(items), initial=finished, desc=label, enabled=progress) as b:
        for i, drawn in stream:
            new = [r for r in drawn if r["prompt_id"] not in done]
            if path is not None:
                runs.append_jsonl(path, new)
            rows.extend(new)
            b.update(len(todo[i]))
    return rows


# ---------------------------------------------------------------------------------------------- responses

def base_token_logprobs(model: Model, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
                        progress: str | None = None) -> list[list[float]]:
    """Per-token log pi_base of each response: scored with the LoRA adapter disabled, if there is one."""
    if not prompts:
        return []
    off = model.module.disable_adapter() if hasattr(model.module, "disable_adapter") else nullcontext()
    with off:
        return score(model, [list(p) for p in prompts], [list(r) for r in responses], progress=progress)


def base_logprobs(model: Model, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
                  progress: str | None = None) -> list[float]:
    """log pi_base(y | x) of each response (Eq. 2), the sum of `base_token_logprobs`."""
    return [float(sum(t)) for t in base_token_logprobs(model, prompts, responses, progress)]


def respond(model: Model, task: Task, items: Sequence[Item], prompt_ids: dict[str, list[int]], samples: int,
            max_new_tokens: int, temperature: float = 1.0, seed: int = 0, dtype: str | None = None,
            progress: str | None = None, chat: bool = False, exact_logprobs: bool = True) -> list[dict]:
    """Greedy and `samples` temperature-`temperature` responses per item, graded, with log pi_base.
    progress: a label for progress bars (none without it). chat: the prompts are chat-templated (responses end
    at the end of turn, not at the completion format's stop strings).

    Rows: `rows.sample_rows` plus `kind` ("greedy" / "sample") and `logprob_base`; `logprob` is under `model`
    itself (the policy, adapter on).
    """
    ids = [prompt_ids[it.id] for it in items]
    rows: list[dict] = []

    def label(what: str) -> str | None:
        return f"{progress}: {what}" if progress else None

    stop = task.stops(chat)
    # No per-token statistics: evaluations use none of the confidence selectors, and they cost ~20% in bf16.
    # Greedy and samples come from one call: one prefill per prompt serves both.
    if samples > 0:
        first, drawn = sample_with_greedy(model, ids, n=samples, max_new_tokens=max_new_tokens,
                                          temperature=temperature, seed=seed, stop=stop, keys=[it.id for it in items],
                                          dtype=dtype, progress=label("greedy + samples"), stats=False,
                                          exact_logprobs=exact_logprobs)
    else:
        first = greedy(model, ids, max_new_tokens=max_new_tokens, stop=stop, dtype=dtype, progress=label("greedy"),
                       stats=False, exact_logprobs=exact_logprobs)
        drawn = [[] for _ in items]
    for it, s in zip(items, first, strict=True):
        rows += [{**r, "kind": "greedy"} for r in sample_rows(task, it, [s])]
    for it, ss in zip(items, drawn, strict=True):
        rows += [{**r, "kind": "sample"} for r in sample_rows(task, it, ss)]
    own = next(causal_lm(model.module).parameters()).dtype
    if not hasattr(model.module, "disable_adapter") and (
            exact_logprobs or sampling_dtype(dtype, own, model.device, exact_logprobs) == own):
        # The model is pi_base and its stored log-probs are its own: log pi_base needs no second pass.
        for r in rows:
            r["logprob_base"] = r["logprob"]
        return rows
    lp = base_logprobs(model, [prompt_ids[r["prompt_id"]] for r in rows], [r["token_ids"] for r in rows],
                       progress=label("log pi_base"))
    for r, v in zip(rows, lp, strict=True):
        r["logprob_base"] = v
    return rows
