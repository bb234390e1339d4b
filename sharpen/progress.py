"""Progress bars on stderr, one look for every stage (tqdm is imported where a bar is made)."""

from __future__ import annotations

from typing import Any


def bar(total: int, initial: int = 0, desc: str | None = None, unit: str = "prompt", enabled: bool = True) -> Any:
    """A tqdm bar (a context manager); disabled, it draws nothing."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True)
