"""Reading benchmark files (a data directory or the Hugging Face hub) with errors that name file and line."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from ..errors import SharpenError

ENV_VAR = "SHARPEN_DATA_DIR"
SPLITS = ("test", "train")
T = TypeVar("T")


def data_root(data_dir: str | os.PathLike | None) -> Path | None:
    """The data directory: the argument, else $SHARPEN_DATA_DIR, else None (download or generate)."""
    chosen = data_dir if data_dir is not None else os.environ.get(ENV_VAR) or None
    if chosen is None:
        return None
    root = Path(chosen).expanduser()
    if not root.is_dir():
        origin = "--data-dir" if data_dir is not None else f"${ENV_VAR}"
        raise SharpenError(f"data directory {root} (from {origin}) does not exist: give a folder with the "
                           f"benchmark files, or unset it to download them from the Hugging Face hub")
    return root


def data_file(root: Path, relative: str) -> Path:
    path = root / relative
    if not path.is_file():
        raise SharpenError(f"{path} is missing: the data directory must hold {relative} "
                           "(see docs/tasks.md), or leave the data directory unset")
    return path


def _check_fields(row: Any, fields: dict[str, type | tuple[type, ...]], where: str) -> dict:
    if not isinstance(row, dict):
        raise SharpenError(f"{where}: expected an object with fields {', '.join(fields)}; fix or replace the file")
    for name, kind in fields.items():
        if name not in row:
            raise SharpenError(f"{where}: field {name!r} is missing; fix or replace the file")
        if not isinstance(row[name], kind) or isinstance(row[name], bool) and kind is not bool:
            raise SharpenError(f"{where}: field {name!r} has type {type(row[name]).__name__}; "
                               "fix or replace the file")
    return row


def read_jsonl(path: Path, fields: dict[str, type | tuple[type, ...]]) -> list[tuple[int, dict]]:
    """(line, object) for each line holding a JSON object; blank lines are skipped."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise SharpenError(f"{path}:{lineno}: not valid JSON ({e.msg}); fix or replace the file") from e
            rows.append((lineno, _check_fields(row, fields, f"{path}:{lineno}")))
    return rows


def read_json_records(path: Path, fields: dict[str, type | tuple[type, ...]]) -> list[tuple[int, dict]]:
    """(line, record) of a JSON array of objects; records are decoded one by one so errors name their line."""
    text = path.read_text(encoding="utf-8")
    decoder = json.JSONDecoder()

    def line_of(pos: int) -> int:
        return text.count("\n", 0, pos) + 1

    def skip(pos: int) -> int:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        return pos

    pos = skip(0)
    if not text.startswith("[", pos):
        raise SharpenError(f"{path}:{line_of(pos)}: expected a JSON array of records; fix or replace the file")
    rows: list[tuple[int, dict]] = []
    pos = skip(pos + 1)
    while not text.startswith("]", pos):
        if rows:
            if not text.startswith(",", pos):
                raise SharpenError(f"{path}:{line_of(pos)}: expected ',' between records; fix or replace the file")
            pos = skip(pos + 1)
        try:
            row, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise SharpenError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); fix or replace the file") from e
        rows.append((line_of(pos), _check_fields(row, fields, f"{path}:{line_of(pos)}")))
        pos = skip(end)
        if pos >= len(text):
            raise SharpenError(f"{path}:{line_of(pos)}: the JSON array is not closed; fix or replace the file")
    return rows


def read_csv(path: Path, columns: Sequence[str]) -> list[tuple[int, dict[str, str]]]:
    """Rows of a CSV with a header row, as (line number, row); every listed column must be filled."""
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise SharpenError(f"{path}:1: header lacks column(s) {', '.join(missing)}; fix or replace the file")
        rows = []
        try:
            for row in reader:
                if all(v in (None, "") for v in row.values()):
                    continue
                if any(row.get(c) in (None, "") for c in columns) or None in row:
                    raise SharpenError(f"{path}:{reader.line_num}: expected the columns {', '.join(columns)} "
                                       f"and no more; fix or replace the file")
                rows.append((reader.line_num, row))
        except csv.Error as e:
            raise SharpenError(f"{path}:{reader.line_num}: not valid CSV ({e}); fix or replace the file") from e
    return rows


def hub_rows(repo: str, config: str | None, split: str) -> list[dict]:
    """Rows of a Hugging Face hub dataset, through the optional `datasets` package."""
    try:
        import datasets
    except ImportError as e:
        raise SharpenError(f"no data directory given and the `datasets` package is missing: pip install datasets "
                           f"(to download {repo}), or give --data-dir / ${ENV_VAR}") from e
    unreachable = _hub_unreachable(repo)
    if unreachable:
        raise SharpenError(f"could not download {repo}: {unreachable}; give --data-dir / ${ENV_VAR} with the "
                           "benchmark files, or set HF_HUB_OFFLINE=1 to use a copy in the local cache")
    try:
        ds = datasets.load_dataset(repo, config, split=split)
    except Exception as e:  # network, auth and format errors all come through here
        first = (str(e).splitlines() or [""])[0][:160]
        raise SharpenError(f"could not download {repo} from the Hugging Face hub ({type(e).__name__}: {first}); "
                           f"check the network, or give --data-dir / ${ENV_VAR} with the benchmark files") from e
    return [dict(row) for row in ds]


def _hub_unreachable(repo: str) -> str | None:
    """Why the hub cannot be reached for dataset `repo`, from one request without retries (None: it answered, or
    offline mode is set and the local cache is meant); the downloads' own retries take about a minute."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    if constants.HF_HUB_OFFLINE:
        return None
    try:
        HfApi(endpoint=constants.ENDPOINT).dataset_info(repo, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except HfHubHTTPError:
        return None  # the hub answered (not found, gated, ...): load_dataset says what it is
    except Exception as e:  # DNS, refused connection, timeout, proxy
        return f"the hub at {constants.ENDPOINT} is unreachable ({' '.join(str(e).split())[:160]})"
    return None


def check_split(task: str, split: str) -> None:
    if split not in SPLITS:
        raise SharpenError(f"unknown split {split!r} for task {task}: use one of {', '.join(SPLITS)}")


def check_options(task: str, options: dict[str, Any], allowed: Sequence[str]) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        choices = ", ".join(allowed) if allowed else "none"
        raise SharpenError(f"unknown option(s) {', '.join(unknown)} for task {task}: accepted options: {choices}")


def take(items: list[T], limit: int | None) -> list[T]:
    """The first `limit` items (all when None)."""
    if limit is None:
        return items
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise SharpenError(f"limit must be a non-negative integer, got {limit!r}")
    return items[:limit]
