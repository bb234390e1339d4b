"""The training log: every row goes to metrics.jsonl (the source of truth, which stages and reports read) and,
with `--log-to tensorboard`, its numbers also go to TensorBoard event files in DIR/tensorboard, where
`tensorboard --logdir runs/` shows them beside other runs.

Tags are `<kind>/<metric>` (`train/loss`, `eval/accuracy`, `eval/guard/empty`, ...), indexed by optimizer step.
A resumed run drops the events after its checkpoint's step (the rows metrics.jsonl drops), so every step is
shown once.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .. import runs
from ..errors import SharpenError

LOG_DIR = "tensorboard"


def scalars(row: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """(tag, value) for every finite number of a metrics row, nested dicts joined by '/'; flags and text are
    left out (they stay in metrics.jsonl)."""
    for key, value in row.items():
        if not prefix and key in ("kind", "step"):
            continue
        tag = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from scalars(value, tag + "/")
        elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            yield tag, float(value)


def open_writer(out: Path, log_to: str, purge_from: int) -> Any:
    """A TensorBoard SummaryWriter for `out`/tensorboard, or None when `log_to` is 'none'. Events at steps >=
    `purge_from` that an interrupted earlier invocation wrote are hidden (0 for a new run, checkpoint step + 1 for
    a resumed one), as metrics.jsonl drops its rows after the checkpoint."""
    if log_to == "none":
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:  # torch raises this when the tensorboard package is missing
        raise SharpenError("--log-to tensorboard needs the tensorboard package: pip install 'sharpen[tensorboard]' "
                           "(metrics.jsonl is written either way)") from e
    return SummaryWriter(log_dir=str(out / LOG_DIR), purge_step=purge_from)


def log_row(path: Path, row: dict[str, Any], writer: Any = None) -> None:
    """Append `row` to metrics.jsonl and, with a writer, its scalars under `<kind>/`; evaluations are flushed at
    once (they are rare and they are what a user waits for)."""
    runs.append_jsonl(path, [row])
    if writer is None:
        return
    for tag, value in scalars(row):
        writer.add_scalar(f"{row.get('kind', 'train')}/{tag}", value, global_step=row["step"])
    if row.get("kind") == "eval":
        writer.flush()
