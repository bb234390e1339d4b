"""Power sampling (`sharpen power`): draws from pi^alpha, the RLHF-sharpening optimum of beta = 1/(alpha - 1), with
no training (engine.power: block-wise MH with suffix resampling, or SMC).

Steps: 1) check options, 2) load the task, 3) through the bon run loop (`kit.run_pool`: prompts, greedy, the
n draws per prompt with their raw temperature-1 log-probs, every selector over them, summary.json), with the power
sampler in place of plain sampling; each chunk's per-prompt chain statistics go to power_stats.jsonl, 4) add the
sampler's cost and mixing to the summary (`power`), 5) write report.md. Resumes by chunks like bon.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .. import runs
from ..config import PowerConfig
from ..engine.power import power_mh, power_smc
from ..report.bon import write_report
from ..tasks import load_task
from .kit import run_pool

STATS = "power_stats.jsonl"


def power_summary(cfg: PowerConfig, rows: list[dict], prompt_ids: set[str]) -> dict[str, Any]:
    """The `power` section of summary.json: the target, and per prompt (the last copy of each in
    power_stats.jsonl) the tokens spent, acceptance rate (mh) or resamplings and effective sample size (smc)."""
    last = {r["prompt_id"]: r for r in rows if r["prompt_id"] in prompt_ids}
    def mean(key: str) -> float | None:
        vals = [r[key] for r in last.values() if r.get(key) is not None]
        return float(np.mean(vals)) if vals else None

    return {"alpha": cfg.alpha, "beta_equivalent": 1 / (cfg.alpha - 1) if cfg.alpha > 1 else None,
            "method": cfg.method, "block": cfg.block, "mh_steps": cfg.mh_steps if cfg.method == "mh" else None,
            "threshold": cfg.threshold if cfg.method == "smc" else None,
            "proposal_temperature": cfg.proposal_temperature or 1 / cfg.alpha, "num_prompts": len(last),
            "tokens_spent_per_prompt": mean("tokens"), "acceptance_rate": mean("acceptance_rate"),
            "resamples_per_prompt": mean("resamples"), "min_ess": mean("min_ess")}


def run_power(cfg: PowerConfig, progress: bool = True) -> dict:
    """Run (or resume) power sampling; returns the summary also written to summary.json."""
    cfg.validate()
    out = Path(cfg.out or "")
    bon = cfg.bon_config()
    task = load_task(cfg.task, data_dir=cfg.data_dir, split=cfg.split, limit=cfg.limit, **cfg.task_options)
    stop = task.stops(cfg.chat)

    def sampler(model: Any, prompts: list[list[int]], keys: list[str]) -> list[list[Any]]:
        common = {"keys": keys, "seed": cfg.seed, "stop": stop, "dtype": cfg.sample_dtype,
                  "temperature": cfg.proposal_temperature, "max_new_tokens": cfg.max_new_tokens}
        if cfg.method == "mh":
            drawn, stats = power_mh(model, prompts, cfg.alpha, chains=cfg.n, steps=cfg.mh_steps, block=cfg.block,
                                    **common)
        else:
            drawn, stats = power_smc(model, prompts, cfg.alpha, particles=cfg.n, block=cfg.block,
                                     threshold=cfg.threshold, **common)
        # Before the rows: a crash may repeat a chunk here, and readers keep each prompt's last copy.
        runs.append_jsonl(out / STATS, ({"prompt_id": k, **st.as_dict()} for k, st in zip(keys, stats, strict=True)))
        return drawn

    if runs.check_run_dir(cfg.out, "power", cfg.identity()) is not None:
        # Statistics are written before their rows: a prompt with rows but no statistics (power_stats.jsonl lost
        # lines) is sampled again.
        have = {r["prompt_id"] for r in runs.load_jsonl(out / STATS)}
        runs.repair_jsonl(out / "samples.jsonl", keep=lambda r: r["prompt_id"] in have)
    summary = run_pool(bon, task, progress=progress, sampler=sampler, command="power", configs=[cfg])
    summary["power"] = power_summary(cfg, runs.load_jsonl(out / STATS), {it.id for it in task.items})
    runs.atomic_write_json(out / "summary.json", summary)
    write_report(out)
    return summary
