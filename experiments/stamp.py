"""The stamp every results page starts with: the command that measured it, the commit, the machine, the date.

    from stamp import stamp            # in a script under experiments/ or bench/
    page = stamp("experiments/headroom.sh runs/headroom") + table

A page written from a dirty working tree says so, and so does a page whose run directories were made at another
commit than the one that writes it (pass `run_commits`, read from the runs' config.json where recorded).
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from collections.abc import Iterable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def commit() -> str:
    """The checked-out commit, with '+dirty' when tracked files differ from it; 'unknown' outside git."""
    head = _git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+dirty" if _git("status", "--porcelain", "--untracked-files=no") else "")


def machine() -> str:
    """CPU model, cores, and the versions that change numbers (torch, transformers)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    versions = []
    for name in ("torch", "transformers"):
        try:
            versions.append(f"{name} {__import__(name).__version__}")
        except ImportError:
            pass
    threads = os.environ.get("OMP_NUM_THREADS")
    return (f"{cpu}, {os.cpu_count()} cores" + (f", OMP_NUM_THREADS={threads}" if threads else "")
            + (", " + ", ".join(versions) if versions else "") + ", no GPU" * (not _has_cuda()))


def _has_cuda() -> bool:
    try:
        import torch
        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def stamp(command: str, run_commits: Iterable[str] = ()) -> str:
    """A markdown header block: command, commit, machine, date (UTC); notes runs made at another commit."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    here = commit()
    lines = ["<!-- written by a script; do not edit by hand: re-run the command below -->",
             f"- command: `{command}`", f"- commit: {here}", f"- machine: {machine()}", f"- date: {now}"]
    head = here.split("+")[0]
    older = sorted({c for c in run_commits
                    if c and not (c.startswith(head) or head.startswith(c.split("+")[0]))})
    if older:
        lines.append(f"- note: some run directories were made at other commits ({', '.join(older)}): their numbers "
                     "come from that code")
    return "\n".join(lines) + "\n\n"
