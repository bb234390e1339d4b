"""The best-of-N stage (`sharpen bon`): sample once, store raw samples, compute every selector offline.

Steps: 1) check options, 2) load the task, 3) sample into the run directory and summarize every selector
(`kit.run_pool`: prompts, greedy, n samples with their raw log-probs, summary.json), 4) write report.md.
"""

from __future__ import annotations

from pathlib import Path

from ..config import BonConfig
from ..report.bon import write_report
from ..tasks import load_task
from .kit import run_pool


def run_bon(cfg: BonConfig, progress: bool = True) -> dict:
    """Run (or resume) a best-of-N experiment; returns the summary also written to summary.json."""
    cfg.validate()
    task = load_task(cfg.task, data_dir=cfg.data_dir, split=cfg.split, limit=cfg.limit, **cfg.task_options)
    summary = run_pool(cfg, task, progress=progress)
    write_report(Path(cfg.out or ""))
    return summary
