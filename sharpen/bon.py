"""The best-of-N stage (`sharpen bon`): sample once, store raw samples, compute every selector offline.

Steps: 1) check options and the run directory, 2) load task and model, 3) write prompts.jsonl,
4) greedy decode every prompt, 5) draw n samples per prompt at the sampling temperature with their raw
log-probs (the self-reward of Eq. 2), 6) summarize all selectors over subsamples, 7) write report.md.
Prompts are processed in fixed chunks (--chunk, by default about 1024 responses per engine call), the unit of
resume: a re-run skips finished chunks, and a chunk is always sampled with the same composition, so an
interrupted run ends with the same files as an uninterrupted one.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import SharpenError
from .models import DEFAULT_MODEL, SAMPLE_DTYPE_HELP, check_sample_dtype


def opt(default: Any, help: str, **kw: Any) -> Any:
    """A config field whose help text the CLI shows (the CLI is derived from the dataclass)."""
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class BonConfig:
    task: str = opt("prontoqa", "task: gsm8k, math, prontoqa, mmlu or game24")
    model: str = opt(DEFAULT_MODEL, "'gemma-3-270m' (embedded), a hub id, a model directory or a .gguf file")
    out: str = opt("runs/bon", "run directory (re-running the same command resumes it)")
    data_dir: str | None = opt(None, "benchmark data directory (default: $SHARPEN_DATA_DIR, else the hub)")
    subject: str | None = opt(None, "MMLU subject(s), comma separated (default: the paper's three college ones)")
    limit: int | None = opt(None, "evaluate the first LIMIT items of the paper's subset (default: all of it)")
    split: str = opt("test", "test: the paper's evaluation subset; train: training prompts (used by sft)")
    n: int = opt(50, "samples per prompt (the paper: 50)")
    seeds: int = opt(10, "subsampling seeds for accuracy at each N (the paper: 10)")
    seed: int = opt(0, "sampling seed: samples depend only on (seed, prompt id, sample index)")
    max_new_tokens: int = opt(512, "maximum response tokens; longer responses are cut and flagged")
    temperature: float = opt(1.0, "sampling temperature (log-probs are always those of temperature 1)")
    chat: bool = opt(False, "wrap prompts in the model's chat template (default: raw completion prompt)")
    device: str = opt("auto", "cpu, cuda, cuda:1 or auto")
    dtype: str | None = opt(None, "float32, bfloat16 or float16 (default: float32 on CPU, bfloat16 on GPU)")
    sample_dtype: str = opt("auto", SAMPLE_DTYPE_HELP)
    chunk: int | None = opt(None, "prompts per sampling call, the unit of progress kept on interruption "
                                  "(default: about 1024 responses per call, enough to keep every row busy)")

    # Options that change results: a run directory refuses to resume with other values for them.
    IDENTITY = ("task", "model", "subject", "limit", "split", "n", "seed", "max_new_tokens", "temperature",
                "chat", "dtype", "sample_dtype", "chunk")

    def validate(self) -> None:
        check_sample_dtype(self.sample_dtype)
        if self.n < 1:
            raise SharpenError(f"--n must be at least 1 (got {self.n})")
        if self.seeds < 1:
            raise SharpenError(f"--seeds must be at least 1 (got {self.seeds})")
        if self.max_new_tokens < 1:
            raise SharpenError(f"--max-new-tokens must be at least 1 (got {self.max_new_tokens})")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise SharpenError(f"--temperature must be >= 0 (got {self.temperature}); 0 means greedy")
        if self.limit is not None and self.limit < 1:
            raise SharpenError(f"--limit must be at least 1 (got {self.limit})")
        if self.chunk is not None and self.chunk < 1:
            raise SharpenError(f"--chunk must be at least 1 (got {self.chunk})")


# Responses per engine call when --chunk is not given. Rows that finish are refilled only from the samples of the
# same call, so a call needs many more pending responses than decode rows (up to 256) or its tail runs nearly empty.
CALL_RESPONSES = 1024


def chunk_size(chunk: int | None, per_prompt: int) -> int:
    """Prompts per engine call: --chunk, or enough prompts for CALL_RESPONSES responses."""
    return chunk if chunk else max(1, -(-CALL_RESPONSES // per_prompt))


def sample_rows(task: Any, item: Any, samples: list[Any]) -> list[dict]:
    """Rows of samples.jsonl / greedy.jsonl: the raw sample plus its extracted answer and grade."""
    rows = []
    for i, s in enumerate(samples):
        answer = task.extract(s.text)
        rows.append({"prompt_id": item.id, "index": i, "text": s.text, "token_ids": list(s.token_ids),
                     "logprob": s.logprob, "num_tokens": len(s.token_ids), "finish_reason": s.finish_reason,
                     "answer": answer, "correct": bool(task.grade(item, s.text))})
    return rows


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _todo(chunks: list[list], done_counts: dict[str, int], per_prompt: int) -> list[list]:
    return [c for c in chunks if any(done_counts.get(it.id, 0) < per_prompt for it in c)]


def _counts(rows: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        out[r["prompt_id"]] = out.get(r["prompt_id"], 0) + 1
    return out


def run_bon(cfg: BonConfig, progress: bool = True) -> dict:
    """Run (or resume) a best-of-N experiment; returns the summary also written to summary.json."""
    from . import runs
    from .engine import greedy, sample
    from .models import load_model, prompt_token_ids, sampling_dtype
    from .report import write_report
    from .selection import summarize
    from .tasks import load_task

    cfg.validate()
    # 1) The run directory is checked before anything slow happens.
    options = {k: v for k, v in asdict(cfg).items()}
    identity = {k: options[k] for k in cfg.IDENTITY}
    out = Path(cfg.out)
    task = load_task(cfg.task, data_dir=cfg.data_dir, split=cfg.split, limit=cfg.limit,
                     **({"subject": cfg.subject} if cfg.subject else {}))
    runs.prepare_run_dir(out, identity, {"options": options, "num_prompts": len(task.items),
                                         "versions": runs.package_versions()}, command="bon")
    # 2) Model.
    model = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    items = task.items
    by_id = {it.id: it for it in items}

    # 3) Prompts, with the exact token ids the model saw.
    prompt_ids = {it.id: prompt_token_ids(model, it.prompt, chat=cfg.chat) for it in items}
    prompts_path = out / "prompts.jsonl"
    if not prompts_path.exists():
        runs.write_jsonl(prompts_path, ({"id": it.id, "prompt": it.prompt, "prompt_token_ids": prompt_ids[it.id],
                                         "answer": it.answer} for it in items))

    def run_stage(path: Path, per_prompt: int, draw: Any, label: str) -> list[dict]:
        chunks = _chunks(items, chunk_size(cfg.chunk, per_prompt))
        # Rows of prompts left incomplete by a crash are dropped, then their whole chunk is redone.
        rows = runs.load_jsonl(path)
        counts = _counts(rows)
        rows = runs.repair_jsonl(path, keep=lambda r: counts.get(r["prompt_id"], 0) == per_prompt
                                 and r["prompt_id"] in by_id)
        counts = _counts(rows)
        todo = _todo(chunks, counts, per_prompt)
        done = len(items) - sum(len(c) for c in todo)
        if done and progress:
            print(f"{label}: resuming, {done} of {len(items)} prompts already in {path.name}", file=sys.stderr)
        # The bar closes (ends its line) before an error reaches the CLI, so the error gets a line of its own.
        with _bar(total=len(items), initial=done, desc=label, enabled=progress) as bar:
            for chunk in todo:
                results = draw([prompt_ids[it.id] for it in chunk], [it.id for it in chunk])
                new = []
                for it, samples in zip(chunk, results, strict=True):
                    if counts.get(it.id, 0) != per_prompt:
                        new.extend(sample_rows(task, it, samples))
                runs.append_jsonl(path, new)
                rows.extend(new)
                bar.update(len(chunk))
        return rows

    inner = "  responses" if progress else False  # the engine's bar inside a chunk (prompts finish per chunk)
    # 4) Greedy: the baseline every selector is compared to.
    greedy_rows = run_stage(out / "greedy.jsonl", 1, lambda p, keys: [[s] for s in greedy(
        model, p, max_new_tokens=cfg.max_new_tokens, stop=task.stop, dtype=cfg.sample_dtype, progress=inner)],
        "greedy")
    # 5) n samples per prompt, each with its raw temperature-1 log-prob.
    sample_rows_ = run_stage(out / "samples.jsonl", cfg.n, lambda p, keys: sample(
        model, p, n=cfg.n, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=cfg.seed,
        stop=task.stop, keys=keys, dtype=cfg.sample_dtype, progress=inner), f"sample x{cfg.n}")
    # 6) Every selector, offline, over subsamples.
    summary = summarize(sample_rows_, greedy_rows, n=cfg.n, seeds=cfg.seeds)
    summary["task"], summary["model"] = cfg.task, cfg.model
    # The dtype the engine computed in: bf16 log-probs carry a small error (sharpen.engine), fp32 none.
    summary["sample_dtype"] = str(sampling_dtype(cfg.sample_dtype, model.dtype, model.device)).removeprefix("torch.")
    summary["greedy_invalid_logprobs"] = sum(not _valid(r["logprob"]) for r in greedy_rows)
    runs.atomic_write_json(out / "summary.json", summary)
    bad, bad_greedy = summary["invalid_logprobs"], summary["greedy_invalid_logprobs"]
    if bad or bad_greedy:
        print(f"sharpen: warning: {bad} of {summary['num_prompts'] * cfg.n} samples and {bad_greedy} of "
              f"{len(greedy_rows)} greedy responses have a NaN/inf log-prob (the model's forward pass is "
              "numerically broken: try --dtype float32); they are never selected as best", file=sys.stderr)
    # 7) The report reads the files.
    write_report(out)
    return summary


def _valid(logprob: float | None) -> bool:
    """A usable self-reward: stored NaN/inf log-probs are null in the files, and -inf is a legitimate value."""
    return logprob is not None and not math.isnan(logprob) and logprob != math.inf


def _bar(total: int, initial: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="prompt", disable=not enabled, dynamic_ncols=True)
