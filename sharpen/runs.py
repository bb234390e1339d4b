"""Run directories: atomic writes, crash-safe JSONL appends, resume, and refusing mismatched options.

Every stage writes plain files (JSON, JSONL, PNG) into its run directory. A JSONL file only ever grows by whole
lines written with one `write` and an fsync, so a crash leaves at worst one partial last line, which readers
drop and `repair_jsonl` removes before anything is appended again. Other files are replaced atomically
(temporary file, fsync, rename); temporary files left by a crash are removed when the run directory is reopened.

What a command may write into: `--out` must be a new or empty folder, or a run directory the same command wrote
(its config.json says so); anything else is refused before anything is written. Nothing is ever written through a
symbolic link, and a run directory that holds one is refused. Every file read back is checked against its schema
(`sharpen.schema`): damage is one line naming the file (and line) and the fix.

Test hook: with SHARPEN_TEST_KILL_WRITE=NAME:K in the environment, the K-th write of the process to a file
called NAME (an append or an atomic write) writes half its data, then the process kills itself with SIGKILL:
tests/test_crash.py uses it to crash a run in the middle of a write. Unset, it does nothing.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import signal
import subprocess
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import IO, Any

from . import schema
from .errors import SharpenError

_KILL_WRITE = os.environ.get("SHARPEN_TEST_KILL_WRITE", "")
_WRITES: Counter[str] = Counter()  # writes per file name, counted only while the test hook is set


def _maybe_die_mid_write(f: Any, path: Path, data: str | bytes) -> None:
    """The test hook of the module docstring: tear this write half-way and SIGKILL the process."""
    if not _KILL_WRITE:
        return
    name, _, k = _KILL_WRITE.rpartition(":")
    if path.name != name:
        return
    _WRITES[name] += 1
    if _WRITES[name] == int(k):
        cut = len(data) // 2
        while cut > 0 and data[cut - 1:cut] in ("\n", b"\n"):  # end inside a line, so the tear is visible
            cut -= 1
        f.write(data[:cut])
        f.flush()
        os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)


def _disk_error(path: Path, err: OSError) -> SharpenError:
    if err.errno == errno.ELOOP:  # O_NOFOLLOW met a link (a run directory is checked for them when opened)
        return SharpenError(f"{path} is a symbolic link: sharpen writes only its own files, never through a link; "
                            "remove the link or use a new --out")
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


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """`write(f)` into a temporary file in the same directory, fsync, then rename over `path`: a crash (kill -9
    included) leaves the old file or the new one, never a torn one."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)  # replaces a link at `path` itself, never its target
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as e:
        raise _disk_error(path, e) from e


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over `path`."""
    data = text.encode("utf-8")

    def write(f: IO[bytes]) -> None:
        _maybe_die_mid_write(f, Path(path), data)
        f.write(data)

    atomic_write(path, write)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(_finite(obj), indent=2, ensure_ascii=False, default=_json_default) + "\n")


def read_json(path: Path) -> dict:
    """A JSON document of a run directory, checked against its file's schema (`schema.DOCS`)."""
    path = Path(path)
    try:
        obj = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as e:
        raise SharpenError(f"cannot read {path} ({e.strerror or e}): {schema.fix(path)}") from e
    except UnicodeDecodeError as e:
        raise SharpenError(f"{path} is not UTF-8 text (byte {e.start}): {schema.fix(path)}") from e
    except json.JSONDecodeError as e:
        raise SharpenError(f"{path} is not valid JSON (line {e.lineno}): {schema.fix(path)}") from e
    except RecursionError as e:
        raise SharpenError(f"{path} is nested too deeply to be a sharpen file: {schema.fix(path)}") from e
    check_fields(path, obj, schema.DOCS.get(path.name))
    return obj


def check_fields(path: Path, obj: Any, fields: schema.Schema | None, lineno: int | None = None) -> None:
    """Raise the one-line error of `schema.problem` where `obj`, read from `path`, does not match `fields`."""
    problem = schema.problem(path, obj, fields, lineno)
    if problem:
        raise SharpenError(problem)


def load_jsonl(path: Path) -> list[dict]:
    """All complete rows of a JSONL file, each checked against its file's schema (`schema.ROWS`); a partial last
    line (from a crash) is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    rows_schema = schema.ROWS.get(path.name)
    rows = []
    try:
        with path.open("rb") as f:
            for lineno, raw in enumerate(f, 1):
                if not raw.endswith(b"\n"):
                    break  # torn final write: not a row
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise SharpenError(f"{path}:{lineno} is not UTF-8 text: {schema.ROW_FIX}") from e
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except (json.JSONDecodeError, RecursionError) as e:
                    raise SharpenError(f"{path}:{lineno} is not valid JSON: {schema.ROW_FIX}") from e
                check_fields(path, row, rows_schema, lineno)
                rows.append(row)
    except OSError as e:
        raise SharpenError(f"cannot read {path} ({e.strerror or e}): {schema.fix(path)}") from e
    return rows


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(dumps(r) + "\n" for r in rows))


def _no_follow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW, 0o666)


def append_jsonl(path: Path, rows: Iterable[dict]) -> None:
    """Append whole lines with a single write and fsync (a crash tears at most the last line); never through a
    symbolic link."""
    data = "".join(dumps(r) + "\n" for r in rows)
    if not data:
        return
    try:
        with open(path, "a", encoding="utf-8", opener=_no_follow) as f:
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


# ---------------------------------------------------------------------------------------------- run directories

# Run directories the current command opened (prepare_run_dir): the only ones it records its wall time in.
_OPENED: set[Path] = set()
# What atomic_write leaves behind when killed: .NAME.XXXXXXXX.tmp (tempfile.mkstemp's 8 random characters).
_STALE_TMP = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")
_FIRST_TMP = re.compile(r"\.config\.json\.[a-z0-9_]{8}\.tmp")


def opened(out: str | Path) -> bool:
    """True when `out` was opened as a run directory (and so may be written into) since `forget_opened`."""
    return Path(out).resolve() in _OPENED


def forget_opened() -> None:
    """Start a new command: no run directory is opened yet."""
    _OPENED.clear()


def symlink_in(out: Path) -> Path | None:
    """The first symbolic link found under `out`, if any (sharpen itself never makes one)."""
    for root, dirs, files in os.walk(out):
        for name in (*dirs, *files):
            if os.path.islink(os.path.join(root, name)):
                return Path(root) / name
    return None


def check_run_dir(out: str | Path | None, command: str, identity: Mapping[str, Any] | None = None) -> dict | None:
    """Refuse `out` as the run directory of `command` unless it is a new or empty folder, or a run directory
    `command` wrote with the same `identity` (the options that change results; None: not compared). Writes
    nothing. Returns the config.json found there (None for a new or empty folder)."""
    if out is None or not str(out).strip():
        raise SharpenError("--out is empty: give a run directory (a new or empty folder)")
    out = Path(out)
    if out.is_symlink() and not out.exists():
        raise SharpenError(f"--out {out} is a broken symbolic link: give a new or empty folder")
    if out.exists() and not out.is_dir():
        raise SharpenError(f"--out {out} is a file, not a folder: give a new or empty folder")
    try:
        # A folder that holds only what a kill during the first config.json write left counts as empty.
        empty = not out.exists() or all(_FIRST_TMP.fullmatch(p.name) for p in out.iterdir())
    except OSError as e:
        raise SharpenError(f"cannot read {out} ({e.strerror}): fix its permissions or choose another --out") from e
    if empty:
        return None
    cfg_path = out / "config.json"
    if not cfg_path.is_file() or cfg_path.is_symlink():
        raise SharpenError(f"{out} is not empty and holds no sharpen run (no config.json): give --out a new or "
                           f"empty folder, or a {command} run directory to resume it")
    old = read_json(cfg_path)
    if "command" not in old:  # e.g. a model directory's config.json
        raise SharpenError(f"{out} is not a sharpen run directory (its config.json was not written by sharpen): "
                           "give --out a new or empty folder")
    if old.get("command") != command:
        raise SharpenError(f"{out} holds a '{old.get('command')}' run, not '{command}': use another --out")
    check_fields(cfg_path, old, {"identity": schema.DICT})  # written with every run directory
    link = symlink_in(out)
    if link is not None:
        raise SharpenError(f"{link} is a symbolic link: sharpen never writes or reads through a link in its run "
                           "directory; remove the link or use a new --out")
    if identity is not None:
        old_id = old["identity"]
        diffs = [k for k in sorted(set(identity) | set(old_id)) if _norm(identity.get(k)) != _norm(old_id.get(k))]
        if diffs:
            k = diffs[0]
            raise SharpenError(
                f"{out} was made with {k}={old_id.get(k)!r} but this command has {k}={identity.get(k)!r}: "
                "re-run with the same options to resume, or use a new --out")
    return old


def prepare_run_dir(out: str | Path | None, identity: dict[str, Any], config: dict[str, Any], command: str) -> Path:
    """Create `out` (or reopen it) after `check_run_dir`: refused, nothing is written anywhere.

    `identity` holds the options that change results; `config` is everything written to config.json.
    """
    check_run_dir(out, command, identity)
    out = Path(str(out))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SharpenError(f"cannot create run directory {out} ({e.strerror}): choose another --out") from e
    if not os.access(out, os.W_OK):
        raise SharpenError(f"run directory {out} is not writable: fix its permissions or choose another --out")
    # Left by a crash inside atomic_write, in this run directory that this command wrote: never a finished file.
    for root, _, files in os.walk(out):
        for name in files:
            tmp = Path(root) / name
            if _STALE_TMP.fullmatch(name) and tmp.is_file() and not tmp.is_symlink():
                tmp.unlink(missing_ok=True)
    # Every commit of the source that wrote to this run, in order: results pages say when runs span commits.
    commits = _earlier_commits(out / "config.json")
    here = source_commit()
    commits += [here] if here and here not in commits else []
    atomic_write_json(out / "config.json", {"command": command, "identity": identity, **config, "commits": commits})
    _OPENED.add(out.resolve())
    return out


def open_run(out: str | Path | None, command: str, configs: Sequence[Any], **extra: Any) -> Path:
    """`prepare_run_dir` for a stage's configs (each with `options()` and `identity()`): config.json holds their
    options, `extra` and the package versions; the identity is the union of theirs. An empty or missing `out`
    field of a config (which `Path` would read as the current directory) is refused."""
    options: dict[str, Any] = {}
    identity: dict[str, Any] = {}
    for c in configs:
        options.update(c.options())
        identity.update(c.identity())
    given = [c.out for c in configs if hasattr(c, "out")]
    return prepare_run_dir(given[0] if given else out, identity,
                           {"options": options, **extra, "versions": package_versions()}, command=command)


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
    if not schema.INT.ok(o.get("n")):
        raise SharpenError(f"{run / 'config.json'}: option n is {o.get('n')!r}, not an integer: give a bon run "
                           "directory as sharpen wrote it")
    if o["n"] < n:
        raise SharpenError(f"{run} has {o.get('n')} samples per prompt, this run needs {n}: lower --n "
                           "(xpo: --rounds x --pairs), or sample a larger bon run")
    return o


def _norm(v: Any) -> Any:
    return json.loads(json.dumps(v, default=_json_default))


def same_value(a: Any, b: Any) -> bool:
    """Two option values are the same once written to JSON (a tuple and its list, a Path and its string)."""
    return _norm(a) == _norm(b)


def _earlier_commits(path: Path) -> list[str]:
    """The commits an earlier invocation recorded in config.json (none for runs made before they were recorded)."""
    if not path.exists():
        return []
    commits = read_json(path).get("commits")
    return [c for c in commits if isinstance(c, str)] if isinstance(commits, list) else []


@cache
def source_commit() -> str | None:
    """The git commit of the running sharpen source, '+dirty' when its tracked files differ from it; None when the
    package is not a git checkout (an installed wheel) or git is missing."""
    where = Path(__file__).resolve().parent
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()
        head = git("rev-parse", "--short=12", "HEAD")
        return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no", "--", ".") else "")
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("sharpen", "torch", "transformers", "peft", "math-verify", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out
