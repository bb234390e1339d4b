"""Bounded equivalence of math answers with math_verify, run in a helper process that can be killed.

sympy can hang on short inputs (`9^{9^{9}}`, `(x+1)^{1000}`, `1000000!`), partly inside big-integer C code
that no signal interrupts, and math_verify's own timeout uses SIGALRM, which only works in the main thread. So
checks run in a child process: an interval timer there stops slow Python-level work, and the parent kills the
child when even that does not answer in time, switching to a warm spare. A check that does not finish in time
counts as incorrect.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import subprocess
import sys
import threading
from functools import lru_cache
from pathlib import Path

from ..errors import SharpenError

MAX_CHARS = 256  # a final answer is short; longer strings are graded incorrect unparsed
MAX_DEPTH = 12  # bracket nesting deeper than this is not an answer and slows the LaTeX parser
SOFT_LIMIT_S = 0.5  # the child's own timer: interrupts Python-level sympy work
HARD_LIMIT_S = 0.9  # the parent's deadline: the child is killed (C-level work ignores the timer)
STARTUP_LIMIT_S = 120.0  # importing sympy on a loaded machine; not part of any verdict's time
MEMORY_LIMIT = 2 << 30  # bytes of address space for the child


def fits(text: str) -> bool:
    """Short and shallow enough to hand to the LaTeX parser at all."""
    if len(text) > MAX_CHARS:
        return False
    depth = 0
    for ch in text:
        if ch in "({[":
            depth += 1
            if depth > MAX_DEPTH:
                return False
        elif ch in ")}]":
            depth -= 1
    return True


def warm() -> None:
    """Start the checker processes now instead of at the first check (their start-up is not a verdict's time)."""
    _CHECKER.warm()


def equivalent(answer: str, gold: str) -> bool:
    """math_verify's verdict that `answer` equals `gold` (LaTeX without $), bounded in time and memory."""
    if not (isinstance(answer, str) and isinstance(gold, str) and fits(answer) and fits(gold)):
        return False
    return _cached(answer, gold)


@lru_cache(maxsize=1 << 16)
def _cached(answer: str, gold: str) -> bool:
    return _CHECKER.check(answer, gold)


class _Worker:
    """One child process: reads JSON [answer, gold] lines, writes '1' or '0' lines (after a first 'ready')."""

    def __init__(self) -> None:
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, text=True, encoding="utf-8", bufsize=1, env=env)
        except OSError as e:
            raise SharpenError(f"could not start the math answer checker ({sys.executable} -m {__name__}): {e}; "
                               "check that this Python can run subprocesses") from e
        self.replies: queue.Queue[str | None] = queue.Queue()
        self.ready = False
        threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True).start()

    def _pump(self, stream) -> None:
        for line in stream:
            self.replies.put(line.strip())
        self.replies.put(None)

    def wait_ready(self) -> bool:
        if not self.ready:
            try:
                self.ready = self.replies.get(timeout=STARTUP_LIMIT_S) == "ready"
            except queue.Empty:
                return False
        return self.ready

    def ask(self, answer: str, gold: str) -> bool | None:
        """The verdict, or None when the child did not answer in time (it must then be replaced)."""
        try:
            self.proc.stdin.write(json.dumps([answer, gold]) + "\n")
            self.proc.stdin.flush()
            reply = self.replies.get(timeout=HARD_LIMIT_S)
        except (OSError, ValueError, queue.Empty):
            return None
        return None if reply is None else reply == "1"

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


class _Checker:
    """Owns the current worker and a warm spare that takes over at once when the current one gets stuck."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.worker: _Worker | None = None
        self.spare: _Worker | None = None
        self.pid = os.getpid()

    def check(self, answer: str, gold: str) -> bool:
        with self.lock:
            worker = self._ready()
            verdict = worker.ask(answer, gold)
            if verdict is None:
                worker.close()
                self.worker, self.spare = self.spare, _Worker()  # the new spare warms up meanwhile
                return False
            return verdict

    def warm(self) -> None:
        """Start the worker and the spare and wait until both answer."""
        with self.lock:
            self._ready()
            if not self.spare.wait_ready():
                self._fail()

    def _ready(self) -> _Worker:
        if self.pid != os.getpid():  # a forked copy of this process: the pipes belong to the parent
            self.worker = self.spare = None
            self.pid = os.getpid()
        if self.worker is None:
            import importlib.util

            if importlib.util.find_spec("math_verify") is None:
                raise SharpenError("grading MATH needs math-verify: pip install math-verify")
            self.worker = _Worker()
        if self.spare is None:
            self.spare = _Worker()
        if not self.worker.wait_ready():
            self._fail()
        return self.worker

    def _fail(self) -> None:
        self.close_all()
        raise SharpenError("the math answer checker process did not start: check that math-verify works "
                           "in this Python environment (python -c 'import math_verify')")

    def close_all(self) -> None:
        for worker in (self.worker, self.spare):
            if worker is not None:
                worker.close()
        self.worker = self.spare = None

    def close(self) -> None:
        with self.lock:
            self.close_all()


_CHECKER = _Checker()
atexit.register(_CHECKER.close)


# ---- the child process ------------------------------------------------------------------------------------

class _Timeout(BaseException):
    """Not an Exception: math_verify catches those internally and would carry on past the deadline."""


def _verdict(parse, verify, answer: str, gold: str) -> bool:
    # math_verify's own timeouts are off (None): the interval timer below and the parent's deadline bound it.
    gold_parsed = parse("\\boxed{" + gold + "}", parsing_timeout=None)
    answer_parsed = parse("\\boxed{" + answer + "}", parsing_timeout=None)
    return bool(gold_parsed and answer_parsed and verify(gold_parsed, answer_parsed, timeout_seconds=None))


def _serve() -> None:
    """Child main loop: read JSON [answer, gold] lines, write 1 or 0 lines."""
    import logging
    import signal

    out, sys.stdout = sys.stdout, sys.stderr  # a stray print from a library must not break the protocol
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, resource.getrlimit(resource.RLIMIT_AS)[1]))
    except (ImportError, ValueError, OSError):
        pass  # no address-space limit on this platform; the parent's deadline still holds
    logging.disable(logging.CRITICAL)
    from math_verify import parse, verify

    timer = hasattr(signal, "setitimer")
    if timer:
        def on_alarm(signum, frame):
            raise _Timeout

        signal.signal(signal.SIGALRM, on_alarm)
    _verdict(parse, verify, "1", "1")  # loads the LaTeX grammar before the first timed request
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        try:
            try:
                answer, gold = json.loads(line)
                if timer:
                    signal.setitimer(signal.ITIMER_REAL, SOFT_LIMIT_S)
                ok = _verdict(parse, verify, answer, gold)
            finally:
                if timer:
                    signal.setitimer(signal.ITIMER_REAL, 0)
        except (Exception, _Timeout):  # timeouts (even in `finally`), MemoryError, sympy errors: incorrect
            ok = False
        out.write("1\n" if ok else "0\n")
        out.flush()


if __name__ == "__main__":
    _serve()
