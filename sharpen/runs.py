"""Run directories: atomic writes, crash-safe JSONL appends, resume, and refusing mismatched options.

Every stage writes plain files (JSON, JSONL, PNG) into its run directory. A JSONL file only ever grows by whole
lines written with one `write` and an fsync, so a crash leaves at worst one partial last line, which readers
drop and `repair_jsonl` removes before anything is appended again. Other files are replaced atomically
(temporary file, fsync, rename); temporary files left by a crash are removed when the run directory is reopened.

Test hook: with SHARPEN_TEST_KILL_WRITE=NAME:K in the environment, the K-th write of the process to a file
called NAME (an append or an atomic write) writes half its data, then the process kills itself with SIGKILL:
tests/test_crash.py uses it to crash a run in the middle of a write. Unset, it does nothing.
"""

from __future__ import annotations

import json
import math
import os
import signal
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import SharpenError

_KILL_WRITE = os.environ.get("SHARPEN_TEST_KILL_WRITE", "")
_WRITES: Counter[str] = Counter()  # writes per file name, counted only while the test hook is set


def _maybe_die_mid_write(f: Any, path: Path, data: str) -> None:
    """The test hook of the module docstring: tear this write half-way and SIGKILL the process."""
    if not _KILL_WRITE:
        return
    name, _, k = _KILL_WRITE.rpartition(":")
    if path.name != name:
        return
    _WRITES[name] += 1
    if _WRITES[name] == int(k):
        cut = len(data) // 2
        while cut > 0 and data[cut - 1] == "\n":  # end inside a line, so the tear is visible
            cut -= 1
        f.write(data[:cut])
        f.flush()
        os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)


def _disk_error(path: Path, err: OSError) -> SharpenError:
    return SharpenError(f"cannot write {path} ({err.strerror or err}): free disk space or fix permissions, "
                        "then re-run the same command to continue (finished work is kept)")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def dumps(obj: Any) -> str:
    """One JSON line. Non-finite floats become null: files stay standard JSON, and readers treat a null
    log-prob as invalid (never selected as best)."""
    return json.dumps(_finite(obj), ensure_ascii=False, default=_json_default)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over `path`."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                _maybe_die_mid_write(f, path, text)
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as e:
        raise _disk_error(path, e) from e


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(_finite(obj), indent=2, ensure_ascii=False, default=_json_default) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SharpenError(f"{path} is not valid JSON (line {e.lineno}): delete it or use a new --out") from e


def load_jsonl(path: Path) -> list[dict]:
    """All complete rows of a JSONL file; a partial last line (from a crash) is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.endswith("\n"):
                break  # torn final write: not a row
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise SharpenError(f"{path}:{lineno} is not valid JSON: delete the line or the file "
                                       "and re-run to recompute it") from e
    return rows


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(dumps(r) + "\n" for r in rows))


def append_jsonl(path: Path, rows: Iterable[dict]) -> None:
    """Append whole lines with a single write and fsync (a crash tears at most the last line)."""
    data = "".join(dumps(r) + "\n" for r in rows)
    if not data:
        return
    try:
        with open(path, "a", encoding="utf-8") as f:
            _maybe_die_mid_write(f, Path(path), data)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise _disk_error(Path(path), e) from e


def repair_jsonl(path: Path, keep: Any = None) -> list[dict]:
    """Load rows, drop a torn last line and rows for which `keep(row)` is false; rewrite only if needed."""
    path = Path(path)
    if not path.exists():
        return []
    raw = path.read_bytes()
    rows = load_jsonl(path)
    kept = [r for r in rows if keep is None or keep(r)]
    if len(kept) != len(rows) or (raw and not raw.endswith(b"\n")):
        write_jsonl(path, kept)
    return kept


def prepare_run_dir(out: Path, identity: dict[str, Any], config: dict[str, Any], command: str) -> Path:
    """Create `out` (or reopen it) and refuse it when it was made with other result-affecting options.

    `identity` holds the options that change results; `config` is everything written to config.json.
    """
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SharpenError(f"cannot create run directory {out} ({e.strerror}): choose another --out") from e
    if not os.access(out, os.W_OK):
        raise SharpenError(f"run directory {out} is not writable: fix its permissions or choose another --out")
    for tmp in out.glob(".*.tmp"):  # left by a crash inside atomic_write_text: never a finished file
        tmp.unlink(missing_ok=True)
    cfg_path = out / "config.json"
    if cfg_path.exists():
        old = read_json(cfg_path)
        if old.get("command") != command:
            raise SharpenError(f"{out} holds a '{old.get('command')}' run, not '{command}': use another --out")
        old_id = old.get("identity", {})
        diffs = [k for k in sorted(set(identity) | set(old_id)) if _norm(identity.get(k)) != _norm(old_id.get(k))]
        if diffs:
            k = diffs[0]
            raise SharpenError(
                f"{out} was made with {k}={old_id.get(k)!r} but this command has {k}={identity.get(k)!r}: "
                "re-run with the same options to resume, or use a new --out")
    atomic_write_json(cfg_path, {"command": command, "identity": identity, **config})
    return out


def open_run(out: Path, command: str, configs: Sequence[Any], **extra: Any) -> Path:
    """`prepare_run_dir` for a stage's configs (each with `options()` and `identity()`): config.json holds their
    options, `extra` and the package versions; the identity is the union of theirs."""
    options: dict[str, Any] = {}
    identity: dict[str, Any] = {}
    for c in configs:
        options.update(c.options())
        identity.update(c.identity())
    return prepare_run_dir(out, identity, {"options": options, **extra, "versions": package_versions()},
                           command=command)


def check_source_run(run: Path, command: str, match: Mapping[str, Any], n: int,
                     temperature: float | None = None) -> dict[str, Any]:
    """A finished run of `command` (e.g. bon) whose samples another stage reuses (--from-run): the options in
    `match` must be the same, it must hold at least `n` samples per prompt and, if given, have been sampled at
    `temperature`. Returns its options."""
    run = Path(run)
    if not all((run / f).exists() for f in ("summary.json", "config.json", "samples.jsonl")):
        raise SharpenError(f"{run} is not a finished {command} run (no summary.json / samples.jsonl): finish it "
                           "with its own command, or drop --from-run")
    conf = read_json(run / "config.json")
    if conf.get("command") != command:
        raise SharpenError(f"{run} holds a '{conf.get('command')}' run, not a {command} run: "
                           f"give a {command} run directory")
    o = conf.get("options", {})
    for key, want in match.items():
        if o.get(key) != want:
            raise SharpenError(f"{run} was sampled with {key}={o.get(key)!r}, not {want!r}: training uses the "
                               f"model's own samples; pass --{key.replace('_', '-')} {o.get(key)}")
    if temperature is not None and o.get("temperature") != temperature:
        raise SharpenError(f"{run} was sampled at temperature {o.get('temperature')}, this run's base samples "
                           f"are drawn at {temperature}: pass --temperature {o.get('temperature')}, sample a new "
                           "bon run or drop --from-run")
    if o.get("n", 0) < n:
        raise SharpenError(f"{run} has {o.get('n')} samples per prompt, this run needs {n}: lower --n "
                           "(xpo: --rounds x --pairs), or sample a larger bon run")
    return o


def _norm(v: Any) -> Any:
    return json.loads(json.dumps(v, default=_json_default))


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("sharpen", "torch", "transformers", "peft", "math-verify", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out
