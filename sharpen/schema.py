"""What each file of a run directory holds, checked where it is read back (`runs.read_json`, `runs.load_jsonl`).

Run directories are read back on resume, by `sharpen report` and by `sharpen compare`. A file damaged by hand, by
a disk fault or by another program must stop the command with one line that names the file (and line) and the
fix, never with a traceback from deep inside a stage. So each file kind has a schema, field -> the kind of value
it holds, checked on every row (JSONL) or document (JSON) as it is read. A field whose name ends in '?' may be
absent; fields a schema does not name are not checked (they are read with `.get`). Files of other names are
only checked to be JSON objects. Pure data and one function; `sharpen.runs` raises the errors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Kind:
    """A kind of JSON value: how an error names it, and the test."""
    what: str
    ok: Callable[[Any], bool]


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # JSON true is not a count


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


INT = Kind("an integer", _int)
NUM = Kind("a number", _num)
STR = Kind("a string", lambda v: isinstance(v, str))
BOOL = Kind("true or false", lambda v: isinstance(v, bool))
DICT = Kind("an object", lambda v: isinstance(v, dict))
LIST = Kind("a list", lambda v: isinstance(v, list))
TOKENS = Kind("a list of token ids", lambda v: isinstance(v, list) and all(type(x) is int for x in v))


def maybe(k: Kind) -> Kind:
    return Kind(f"{k.what} or null", lambda v: v is None or k.ok(v))


def one_of(*values: str) -> Kind:
    return Kind(" or ".join(repr(v) for v in values), lambda v: v in values)


Schema = Mapping[str, Kind]
OPT_NUM, OPT_STR = maybe(NUM), maybe(STR)

# One response as `rows.sample_rows` builds it, with the confidence summaries when they were recorded.
RESPONSE: Schema = {
    "prompt_id": STR, "index": INT, "text": STR, "token_ids": TOKENS, "logprob": OPT_NUM, "num_tokens": INT,
    "finish_reason": STR, "answer": OPT_STR, "correct": BOOL, "drawn?": INT,
    **{f"{k}?": OPT_NUM for k in ("entropy_mean", "self_certainty", "conf_mean", "conf_lowest_group",
                                  "conf_bottom10", "conf_tail")},
}
# A response of an evaluation: greedy or sampled, with its log-prob under the base model.
EVAL_RESPONSE: Schema = {**RESPONSE, "kind": one_of("greedy", "sample"), "logprob_base": OPT_NUM}
PAIR: Schema = {
    "round": INT, "prompt_id": STR, "prompt_token_ids": TOKENS, "y": TOKENS, "y2": TOKENS, "text_y": STR,
    "text_y2": STR, "correct_y": BOOL, "correct_y2": BOOL, "finish_y": STR, "finish_y2": STR, "answer_y": OPT_STR,
    "answer_y2": OPT_STR, "valid_y": BOOL, "valid_y2": BOOL, "self_certainty_y": OPT_NUM,
    "self_certainty_y2": OPT_NUM, "logprob_y": OPT_NUM, "base_y": OPT_NUM, "base_y2": OPT_NUM,
    "reward_y?": OPT_NUM, "reward_y2?": OPT_NUM,
}
# Held-out / validation metrics of a training stage, as metrics.jsonl and rounds.jsonl hold them.
_EVAL_METRICS = ("accuracy", "logprob_base", "logprob", "num_tokens", "j_beta", "kl", "sample_accuracy",
                 "greedy_logprob_base")
_TRAIN_METRICS = ("loss", "lr", "grad_norm", "logprob", "tokens", "reward", "reward_std", "flat_groups",
                  "sample_accuracy", "answer_rate", "valid_rate", "num_tokens", "kl", "logprob_base")

ROWS: dict[str, Schema] = {
    "prompts.jsonl": {"id": STR, "prompt": STR, "prompt_token_ids": TOKENS, "answer": STR},
    "greedy.jsonl": RESPONSE,
    "samples.jsonl": RESPONSE,
    "token_stats.jsonl": {"prompt_id": STR, "index": INT},
    "power_stats.jsonl": {"prompt_id": STR, "tokens": NUM, "proposals?": INT, "accepted?": INT,
                          **{f"{k}?": OPT_NUM for k in ("acceptance_rate", "resamples", "min_ess", "final_ess")}},
    **{name: EVAL_RESPONSE for name in ("eval.jsonl", "eval_base.jsonl", "eval_sharpened.jsonl", "val_base.jsonl",
                                        "val.jsonl")},
    "sft_data.jsonl": {"prompt_id": STR, "prompt_token_ids": TOKENS, "token_ids": TOKENS, "logprob": OPT_NUM,
                       "index": INT, "num_tokens": INT, "finish_reason": STR, "correct": BOOL, "text": STR},
    "pairs.jsonl": PAIR,
    "xpo_data.jsonl": PAIR,
    "rounds.jsonl": {"round": INT, "steps": INT, "num_pairs": INT, "accuracy_ci?": maybe(LIST),
                     "sample_accuracy_ci?": maybe(LIST), "guard_stop?": OPT_STR,
                     **{f"{k}?": OPT_NUM for k in _EVAL_METRICS}},
    "metrics.jsonl": {"kind": one_of("train", "eval"), "step": INT, "epoch?": INT, "examples?": INT,
                      "accuracy_ci?": maybe(LIST), "guard?": maybe(DICT), "guard_stop?": OPT_STR,
                      **{f"{k}?": OPT_NUM for k in (*_TRAIN_METRICS, *_EVAL_METRICS)}},
    "rollouts.jsonl": {"step": INT, "prompt_id": STR, "index": INT, "text": STR, "answer": OPT_STR,
                       "correct": BOOL, "finish_reason": STR, "num_tokens": INT, "logprob": OPT_NUM,
                       "logprob_base": OPT_NUM, "reward": OPT_NUM, "advantage": OPT_NUM},
    "timing.jsonl": {"seconds": NUM, "command?": STR, "status?": STR, "started?": NUM},
}

# JSON documents: the top level only (a report that meets a damaged field deeper down says so itself,
# report.kit.reads_summary).
DOCS: dict[str, Schema] = {
    "config.json": {"command?": STR, "identity?": DICT, "options?": DICT, "versions?": DICT, "commits?": LIST},
    "summary.json": {
        "task?": OPT_STR, "model?": OPT_STR, "algorithm?": STR, "protocol?": STR, "num_prompts?": INT, "ns?": LIST,
        "n?": INT, "selectors?": DICT, "greedy?": maybe(DICT), "labels?": maybe(DICT), "adaptive?": maybe(DICT),
        "adaptive_majority?": maybe(DICT), "power?": DICT, "base?": DICT, "sharpened?": DICT, "table1?": DICT,
        "training?": DICT, "history?": LIST, "rollouts?": DICT, "validation?": maybe(DICT), "guards?": maybe(DICT),
        "base_bon?": DICT, "targets?": DICT, "num_train_prompts?": INT, "num_eval_prompts?": INT},
    "eval.json": {"task?": OPT_STR, "model?": OPT_STR, "adapter?": OPT_STR, "greedy?": maybe(DICT),
                  "sample?": maybe(DICT), "labels?": maybe(DICT), "options?": DICT},
    "sampling.json": {"bon_dir": STR, "bon_options": DICT, "num_train_prompts": INT, "overlap": INT},
    "guard_stop.json": {"stopped": STR},
}

# How to get past a damaged file, by file name (default: recompute it).
FIX = {
    "config.json": "restore it, or start over with a new --out",
    "timing.jsonl": "delete the line",
    "summary.json": "delete it and re-run the run's command to rebuild it",
    "eval.json": "delete it and re-run the run's command to rebuild it",
}
ROW_FIX = "delete the line or the file and re-run to recompute it"


def fix(path: Path, row: bool = False) -> str:
    """What to do about damaged `path` (`row`: one of its lines)."""
    return FIX.get(path.name, ROW_FIX if row else "delete it and re-run the same command to recompute it")


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def problem(path: Path, obj: Any, schema: Schema | None, lineno: int | None = None) -> str | None:
    """One line naming `path` (and line `lineno` of a JSONL file) and the fix where `obj`, a parsed row or
    document, is not a JSON object or does not match `schema` (None: any object); None when it does."""
    where = f"{path}:{lineno}" if lineno is not None else str(path)
    how = fix(path, row=lineno is not None)
    if not isinstance(obj, dict):
        return f"{where} holds {_show(obj)}, not a JSON object: {how}"
    for key, kind in (schema or {}).items():
        name = key.rstrip("?")
        if name not in obj:
            if key.endswith("?"):
                continue
            return f"{where} has no field '{name}': {how}"
        if not kind.ok(obj[name]):
            return f"{where}: '{name}' is {_show(obj[name])}, not {kind.what}: {how}"
    return None
