"""Evaluate a model, optionally with a LoRA adapter (`sharpen eval`): greedy and temperature-1 accuracy, and the
mean log pi_base of its responses, scored under the base model (adapter switched off, no second copy).

The likelihood lift of Table 1 compares log pi_base of the sharpened model's responses with log pi_base of the
base model's greedy responses: sharpening should move generation toward what the base model finds likely.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .bon import opt
from .errors import SharpenError
from .models import DEFAULT_MODEL, SAMPLE_DTYPE_HELP, Model, check_sample_dtype


@dataclass
class EvalConfig:
    model: str = opt(DEFAULT_MODEL, "'gemma-3-270m' (embedded), a hub id, a model directory or a .gguf file")
    adapter: str | None = opt(None, "a PEFT adapter directory, e.g. an sft run's adapter/ (default: none)")
    task: str = opt("prontoqa", "task: gsm8k, math, prontoqa, mmlu or game24")
    data_dir: str | None = opt(None, "benchmark data directory (default: $SHARPEN_DATA_DIR, else the hub)")
    subject: str | None = opt(None, "MMLU subject(s), comma separated (default: the paper's three college ones)")
    limit: int | None = opt(None, "evaluate the first LIMIT items of the paper's subset (default: all of it)")
    samples: int = opt(1, "temperature-1 samples per prompt (0: greedy only)")
    temperature: float = opt(1.0, "sampling temperature of the samples")
    max_new_tokens: int = opt(512, "maximum response tokens")
    seed: int = opt(0, "sampling seed (samples depend only on seed, prompt id and sample index)")
    chat: bool = opt(False, "wrap prompts in the model's chat template")
    device: str = opt("auto", "cpu, cuda, cuda:1 or auto")
    dtype: str | None = opt(None, "float32, bfloat16 or float16 (default: float32 on CPU, bfloat16 on GPU)")
    sample_dtype: str = opt("auto", SAMPLE_DTYPE_HELP)
    out: str | None = opt(None, "write eval.json and the responses (eval.jsonl) into this directory")

    def validate(self) -> None:
        check_sample_dtype(self.sample_dtype)
        if self.samples < 0:
            raise SharpenError(f"--samples must be >= 0 (got {self.samples})")
        if self.max_new_tokens < 1:
            raise SharpenError(f"--max-new-tokens must be at least 1 (got {self.max_new_tokens})")
        if self.limit is not None and self.limit < 1:
            raise SharpenError(f"--limit must be at least 1 (got {self.limit})")


def base_logprobs(model: Model, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
                  progress: str | None = None) -> list[float]:
    """log pi_base(y | x) of each response (Eq. 2): scored with the LoRA adapter disabled, if there is one."""
    from .scoring import score

    if not prompts:
        return []
    off = model.module.disable_adapter() if hasattr(model.module, "disable_adapter") else nullcontext()
    with off:
        per_token = score(model, [list(p) for p in prompts], [list(r) for r in responses], progress=progress)
    return [float(sum(t)) for t in per_token]


def respond(model: Model, task: Any, items: Sequence[Any], prompt_ids: dict[str, list[int]], samples: int,
            max_new_tokens: int, temperature: float = 1.0, seed: int = 0, dtype: str | None = None,
            progress: str | None = None) -> list[dict]:
    """Greedy and `samples` temperature-`temperature` responses per item, graded, with log pi_base.
    progress: a label for progress bars (none without it).

    Rows: those of samples.jsonl (see `bon.sample_rows`) plus `kind` ("greedy" / "sample") and `logprob_base`;
    `logprob` is under `model` itself (the policy, adapter on).
    """
    from .bon import sample_rows
    from .engine import greedy, sample

    ids = [prompt_ids[it.id] for it in items]
    rows: list[dict] = []
    def bar(what: str) -> str | None:
        return f"{progress}: {what}" if progress else None

    first = greedy(model, ids, max_new_tokens=max_new_tokens, stop=task.stop, dtype=dtype, progress=bar("greedy"))
    for it, s in zip(items, first, strict=True):
        rows += [{**r, "kind": "greedy"} for r in sample_rows(task, it, [s])]
    if samples > 0:
        drawn = sample(model, ids, n=samples, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                       stop=task.stop, keys=[it.id for it in items], dtype=dtype, progress=bar("samples"))
        for it, ss in zip(items, drawn, strict=True):
            rows += [{**r, "kind": "sample"} for r in sample_rows(task, it, ss)]
    lp = base_logprobs(model, [prompt_ids[r["prompt_id"]] for r in rows], [r["token_ids"] for r in rows],
                       progress=bar("log pi_base"))
    for r, v in zip(rows, lp, strict=True):
        r["logprob_base"] = v
    return rows


def finite_mean(xs: Sequence[float | None]) -> float | None:
    """Mean of the finite values (a -inf log-prob would swamp it); None when there are none."""
    vals = [float(x) for x in xs if x is not None and math.isfinite(float(x))]
    return sum(vals) / len(vals) if vals else None


def summarize_responses(rows: Sequence[dict]) -> dict[str, dict[str, Any]]:
    """Per kind (greedy / sample): accuracy, mean log pi_base, mean log pi (policy), mean length, counts."""
    out = {}
    for kind in ("greedy", "sample"):
        rs = [r for r in rows if r.get("kind") == kind]
        if not rs:
            continue
        out[kind] = {
            "accuracy": sum(bool(r["correct"]) for r in rs) / len(rs),
            "mean_logprob_base": finite_mean([r.get("logprob_base") for r in rs]),
            "mean_logprob": finite_mean([r.get("logprob") for r in rs]),
            "mean_num_tokens": sum(r["num_tokens"] for r in rs) / len(rs),
            "truncated_fraction": sum(r["finish_reason"] == "length" for r in rs) / len(rs),
            "num_prompts": len({r["prompt_id"] for r in rs}),
            "num_responses": len(rs),
            "empty_fraction": sum(not r["text"].strip() for r in rs) / len(rs),
            **top_answer(rs),
        }
    return out


def top_answer(rows: Sequence[dict]) -> dict[str, Any]:
    """The most common extracted answer over all prompts and its share: a sharpened model that gives one answer
    to everything (e.g. "True" on ProntoQA) scores the base rate of that answer, not reasoning."""
    counts = Counter(r.get("answer") for r in rows)
    answer, k = max(counts.items(), key=lambda kv: (kv[1], str(kv[0])))
    return {"top_answer": answer, "top_answer_fraction": k / len(rows)}


def collapse_warnings(stats: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Lines that flag a sharpened model collapsed to empty responses or to one answer (summarize_responses
    stats per kind), with the reason, so a lift is not read as better reasoning."""
    out = []
    for kind, st in stats.items():
        if st.get("empty_fraction", 0) >= 0.5:
            out.append(f"**Warning:** {100 * st['empty_fraction']:.0f}% of the sharpened {kind} responses are empty. "
                       "An immediate end of response is more likely under pi_base than most sampled answers, and "
                       "shorter responses score higher under the sequence log-likelihood self-reward (Eq. 2), so "
                       "training toward it on sampled responses can end at saying nothing; try a larger beta, fewer "
                       "steps, or a chat prompt (--chat).")
        elif st.get("truncated_fraction", 0) >= 0.5:
            out.append(f"**Warning:** {100 * st['truncated_fraction']:.0f}% of the sharpened {kind} responses hit the "
                       "token limit. Once a loop repeats, each further repeat costs little log pi_base, so training "
                       "toward the sequence log-likelihood self-reward (Eq. 2) can drift into repetition; try a "
                       "larger beta or fewer steps.")
        elif st.get("top_answer") is None and st.get("top_answer_fraction", 0) >= 0.8:
            out.append(f"**Warning:** {100 * st['top_answer_fraction']:.0f}% of the sharpened {kind} responses have "
                       "no answer the task can extract.")
        elif st.get("top_answer") is not None and st.get("top_answer_fraction", 0) >= 0.8:
            out.append(f"**Note:** {100 * st['top_answer_fraction']:.0f}% of the sharpened {kind} responses give "
                       f"the same answer ({st['top_answer']}): accuracy then mostly measures how often that answer "
                       "is the gold one.")
    return out


def responses_table(rows: Sequence[tuple[str, Mapping[str, Any] | None]]) -> list[str]:
    """Markdown table of summarize_responses stats, one line per (name, stats); None stats are skipped."""
    def pct(x: float) -> str:
        return f"{100 * x:.1f}"

    def num(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.2f}"

    lines = ["| responses | accuracy % | mean log pi_base | mean tokens | truncated % | most common answer | prompts |",
             "|---|---|---|---|---|---|---|"]
    for name, st in rows:
        if not st:
            continue
        top = (f"{st['top_answer'] if st['top_answer'] is not None else '(none)'} "
               f"({pct(st['top_answer_fraction'])}%)" if "top_answer" in st else "")
        lines.append(f"| {name} | {pct(st['accuracy'])} | {num(st['mean_logprob_base'])} | "
                     f"{st['mean_num_tokens']:.1f} | {pct(st['truncated_fraction'])} | {top} | "
                     f"{st['num_prompts']} |")
    return lines


def format_eval(stats: dict[str, dict[str, Any]], title: str = "") -> str:
    """Plain-text table: accuracy and mean log pi_base per response kind."""
    head = (f"{'responses':<12}{'accuracy %':>12}{'log pi_base':>14}{'log pi':>12}{'tokens':>9}{'prompts':>9}"
            f"  most common answer")
    lines = ([title] if title else []) + [head, "-" * len(head)]

    def num(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.2f}"

    for kind, st in stats.items():
        lines.append(f"{kind:<12}{100 * st['accuracy']:>12.1f}{num(st['mean_logprob_base']):>14}"
                     f"{num(st['mean_logprob']):>12}{st['mean_num_tokens']:>9.1f}{st['num_prompts']:>9}"
                     f"  {st.get('top_answer')} ({100 * st.get('top_answer_fraction', 0):.0f}%)")
    return "\n".join(lines)


def run_eval(cfg: EvalConfig) -> dict[str, Any]:
    """`sharpen eval`: load model (+ adapter) and task, respond, summarize; optionally write files."""
    from . import runs
    from .models import load_model, prompt_token_ids
    from .tasks import load_task
    from .train import load_adapter

    cfg.validate()
    task = load_task(cfg.task, data_dir=cfg.data_dir, limit=cfg.limit,
                     **({"subject": cfg.subject} if cfg.subject else {}))
    model = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    if cfg.adapter:
        model = load_adapter(model, cfg.adapter)
    ids = {it.id: prompt_token_ids(model, it.prompt, chat=cfg.chat) for it in task.items}
    rows = respond(model, task, task.items, ids, cfg.samples, cfg.max_new_tokens, cfg.temperature, cfg.seed,
                   dtype=cfg.sample_dtype, progress="eval")
    stats = summarize_responses(rows)
    result = {"task": cfg.task, "model": cfg.model, "adapter": cfg.adapter, "options": asdict(cfg), **stats}
    if cfg.out:
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        runs.write_jsonl(out / "eval.jsonl", rows)
        runs.atomic_write_json(out / "eval.json", result)
    return result
