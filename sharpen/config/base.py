"""The base of every stage's options: `opt` (a field with its CLI help), the shared checks, and `RunConfig`, the
fields all stages share (what to run on, where to write, how to decode)."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import math
import re
from dataclasses import dataclass, field
from typing import Any

from ..engine.spec import DEFAULT_MODEL, DTYPES, SAMPLE_DTYPE_HELP
from ..errors import SharpenError


def opt(default: Any, help: str, **kw: Any) -> Any:
    """A config field whose help text the CLI shows (the CLI is derived from the dataclass)."""
    return field(default=default, metadata={"help": help, **kw})


def number_or_auto(text: str) -> float | str:
    """An option value that is a number or the word 'auto'."""
    return "auto" if text == "auto" else float(text)


def bounded(kind: type, low: float, strict: bool = False) -> Any:
    """An argparse type for an option without a config field: a finite `kind` number >= low (> low if strict),
    refused at parsing, in one line, before anything runs."""
    def parse(text: str) -> Any:
        v = kind(text)
        if not math.isfinite(v) or v < low or (strict and v == low):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {low} (got {text})")
        return v

    parse.__name__ = kind.__name__  # argparse names the type in its "invalid int value" message
    return parse


def check_dtype_name(spec: str | None, flag: str, auto: bool = True) -> None:
    """Fail early (before torch or a model loads) on a dtype name the engine would refuse."""
    if spec is None or (auto and spec == "auto") or spec in DTYPES:
        return
    raise SharpenError(f"unknown dtype {spec!r} for {flag}: use one of float32, bfloat16, float16")


def flag(name: str) -> str:
    """The command-line flag of a config field."""
    return "--" + name.replace("_", "-")


def refuse_inert(cfg: Any, why: str, *names: str) -> None:
    """Refuse options set away from their defaults where `why` (e.g. "without --early-stop") makes them do nothing:
    an option that is accepted must change the run."""
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    for name in names:
        if getattr(cfg, name) != defaults[name]:
            raise SharpenError(f"{flag(name)} {getattr(cfg, name)} has no effect {why}: drop it")


def check_ray(cfg: Any) -> None:
    """--workers / --ray-address need Ray: say so before a model loads or a file is written."""
    if (cfg.workers > 1 or cfg.ray_address) and importlib.util.find_spec("ray") is None:
        raise SharpenError("--workers / --ray-address need Ray, which is not installed: pip install 'sharpen[ray]' "
                           "(or ray[data]), or drop them")


DEVICE = re.compile(r"auto|cpu|mps|(cuda|xpu)(:\d+)?")


@dataclass
class RunConfig:
    """The fields every stage shares: what to run on, where to write, how to decode."""
    task: str = opt("prontoqa", "task")  # the CLI appends the registered task names
    model: str = opt(DEFAULT_MODEL, "'gemma-3-270m' (embedded), a hub id, a model directory or a .gguf file")
    out: str | None = opt("runs/run", "run directory (re-running the same command resumes it)")
    data_dir: str | None = opt(None, "benchmark data directory (default: $SHARPEN_DATA_DIR, else the hub)")
    subject: str | None = opt(None, "MMLU subject(s), comma separated (default: the paper's three college ones)")
    level: str | None = opt(None, "arith difficulty: a preset 1-4 or a template like 'aa*b-cc' (letter runs are "
                                  "operands of that many digits; default: 1)")
    max_new_tokens: int = opt(512, "maximum response tokens; longer responses are cut and flagged")
    chat: bool = opt(False, "wrap prompts in the model's chat template (default: raw completion prompt)")
    device: str = opt("auto", "cpu, cuda, cuda:1 or auto")
    dtype: str | None = opt(None, "float32, bfloat16 or float16 (default: float32 on CPU, bfloat16 on GPU)")
    sample_dtype: str = opt("auto", SAMPLE_DTYPE_HELP)
    exact_logprobs: bool = opt(True, "store the model's own log-probs (the self-reward): bfloat16 samples of a float32 "
                                     "model are re-scored in float32; --no-exact-logprobs lets --sample-dtype auto "
                                     "sample in bfloat16 on CPUs that have it (about 3x faster) and keeps the bf16 "
                                     "log-probs (bench/exact_logprobs.py measures both)")
    chunk: int | None = opt(None, "prompts per sampling call, the unit of progress kept on interruption "
                                  "(default: about 1024 responses per call, enough to keep every row busy)")

    # Options that change results: a run directory refuses to resume with other values for them.
    IDENTITY = ("task", "model", "subject", "level", "max_new_tokens", "chat", "dtype", "sample_dtype",
                "exact_logprobs", "chunk")
    # Integer options that must be at least 1 when given (None means "all" or "auto").
    POSITIVE = ("max_new_tokens", "chunk")

    def validate(self) -> None:
        check_dtype_name(self.dtype, "--dtype", auto=False)
        check_dtype_name(self.sample_dtype, "--sample-dtype")
        if not DEVICE.fullmatch(self.device):
            raise SharpenError(f"unknown --device {self.device!r}: use cpu, cuda, cuda:N, mps or auto")
        for name in self.POSITIVE:
            v = getattr(self, name)
            if v is not None and v < 1:
                raise SharpenError(f"{flag(name)} must be at least 1 (got {v})")
        if self.data_dir is not None and self.task == "arith":
            raise SharpenError("--data-dir has no effect on --task arith (its items are generated): drop it")

    def identity(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.IDENTITY}

    def options(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def task_options(self) -> dict[str, Any]:
        """Keyword options of `load_task` beyond name, data dir, split and limit."""
        return {k: v for k, v in (("subject", self.subject), ("level", self.level)) if v}


def check_temperature(t: float, positive: bool) -> None:
    if not math.isfinite(t) or t < 0 or (positive and t == 0):
        raise SharpenError(f"--temperature must be {'> 0 for sampling' if positive else '>= 0'} (got {t})"
                           + ("" if positive else "; 0 means greedy"))
