"""Integer arithmetic, generated: an open-answer task with a difficulty knob and exact grading.

An expression is drawn from a template such as "aa*b-cc": each run of one letter is an operand with that many
digits (no leading zero), and `+ - *` are the operations, evaluated with the usual precedence. Named levels are
presets of templates; any template may be given instead (`--level "aaa*bb+c"`). The 1-shot chain of thought
does the products first, then the sums and differences left to right, one step per sentence, and ends with
'The answer is N.' (extracted as in GSM8K, with its bounds on hostile output).

Splits come from disjoint generators: every expression hashes into one of 20 buckets, and each split (and the
demonstration) owns its own buckets, so no expression can appear in two splits, whatever the seeds and sizes.
Items are deterministic: item i of a split depends only on (template, split, seed) and the items before it.
"""

from __future__ import annotations

import hashlib
import random
import re

from ..errors import SharpenError
from .base import STOP_AT_NEXT_EXAMPLE, Item, Task
from .data import check_options, take
from .gsm8k import GSM8K

# Presets from easy to hard (results/headroom.md measures them): products dominate the difficulty.
LEVELS = {
    "1": "aa*b-cc",          # two steps: two-digit times one-digit, minus two-digit
    "2": "aa*b-cc*d",        # three steps: two products and a difference
    "3": "aa*bb",            # one step, two-digit times two-digit
    "4": "aa*b-cc*d+eee",    # four steps
}
DEFAULT_LEVEL = "1"
SIZES = {"test": 512, "validation": 512, "train": 4096}
# bucket (sha256 of the expression, mod 20) -> owner; 4 : 2 : 13 : 1 of the expression space
_BUCKETS = {"test": range(0, 4), "validation": range(4, 6), "train": range(6, 19), "demo": range(19, 20)}
_TEMPLATE = re.compile(r"([a-z])\1*|[-+*]")
MAX_OPERATIONS = 6
MAX_DIGITS = 4


def parse_template(template: str) -> tuple[list[int], list[str]]:
    """'aa*b-cc' -> ([2, 1, 2], ['*', '-']): digits per operand and the operations between them."""
    text = template.replace(" ", "")
    parts = [m.group() for m in _TEMPLATE.finditer(text)]
    ok = "".join(parts) == text and len(parts) % 2 == 1 and all(
        (p in "+-*") == (i % 2 == 1) for i, p in enumerate(parts))
    digits = [len(p) for p in parts[::2]]
    ops = parts[1::2]
    if not ok or not 1 <= len(ops) <= MAX_OPERATIONS or max(digits, default=0) > MAX_DIGITS:
        raise SharpenError(f"arith level {template!r} is neither a preset ({', '.join(LEVELS)}) nor a template like "
                           f"'aa*b-cc' (letter runs = operand digits, 1-{MAX_DIGITS}; 1-{MAX_OPERATIONS} operations "
                           "of + - *)")
    return digits, ops


def steps(operands: list[int], ops: list[str]) -> tuple[list[str], int]:
    """The chain of thought (one 'x op y = z.' sentence per operation: products first, then left to right)
    and the value."""
    nums, rest, lines = [operands[0]], [], []
    for op, x in zip(ops, operands[1:], strict=True):
        if op == "*":
            lines.append(f"{nums[-1]} * {x} = {nums[-1] * x}.")
            nums[-1] *= x
        else:
            rest.append(op)
            nums.append(x)
    value = nums[0]
    for op, x in zip(rest, nums[1:], strict=True):
        new = value + x if op == "+" else value - x
        lines.append(f"{value} {op} {x} = {new}.")
        value = new
    return lines, value


def _bucket(expression: str) -> int:
    return int.from_bytes(hashlib.sha256(expression.encode()).digest()[:8], "big") % 20


def _operand(rng: random.Random, digits: int) -> int:
    """A uniform operand of `digits` digits; one-digit operands are 2-9 (0 and 1 make steps with nothing to do)."""
    return rng.randrange(10 ** (digits - 1) if digits > 1 else 2, 10 ** digits)


def generate(template: str, owner: str, count: int, seed: int = 0) -> list[tuple[str, list[str], int]]:
    """`count` distinct (expression, steps, value) of `owner`'s buckets with a non-negative value at every step."""
    digits, ops = parse_template(template)
    rng = random.Random(f"arith/{template}/{owner}/{seed}")
    found: dict[str, tuple[list[str], int]] = {}
    tries = 0
    while len(found) < count:
        tries += 1
        if tries > 1000 * count + 10_000:
            raise SharpenError(f"arith level {template!r} has too few distinct expressions for {count} {owner} items: "
                               "lower --limit or choose a level with more digits")
        operands = [_operand(rng, d) for d in digits]
        expression = str(operands[0]) + "".join(f" {op} {x}" for op, x in zip(ops, operands[1:], strict=True))
        if expression in found or _bucket(expression) not in _BUCKETS[owner]:
            continue
        lines, value = steps(operands, ops)
        if value < 0 or any("= -" in line for line in lines):
            continue
        found[expression] = (lines, value)
    return [(e, lines, value) for e, (lines, value) in found.items()]


def format_question(expression: str) -> str:
    return f"Question: What is {expression}?\nAnswer:"


class Arith(Task):
    name = "arith"
    stop = list(STOP_AT_NEXT_EXAMPLE)

    def __init__(self, items: list[Item]) -> None:
        self.items = items

    # One place for extraction and grading of a final number: GSM8K's (bounded by `tail`, ASCII digits only).
    extract = GSM8K.extract
    same_answer = GSM8K.same_answer


def load(data_dir=None, split: str = "test", limit: int | None = None, level: str | None = None, seed: int = 0,
         **options) -> Arith:
    """Generated items of one split (test, validation or train); `level`: a preset name or a template."""
    if split not in SIZES:
        raise SharpenError(f"unknown split {split!r} for task arith: use one of {', '.join(SIZES)}")
    check_options("arith", options, ["level", "seed"])
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise SharpenError(f"arith seed must be an integer, got {seed!r}")
    template = LEVELS.get(level or DEFAULT_LEVEL, level or "")
    take([], limit)  # refuses a bad limit
    count = SIZES[split] if limit is None else limit
    ((demo, demo_lines, demo_value),) = generate(template, "demo", 1)
    header = f"{format_question(demo)} {' '.join(demo_lines)} The answer is {demo_value}.\n\n"
    items = [Item(id=f"arith-{split}-{i}", prompt=header + format_question(expression), answer=str(value),
                  meta={"expression": expression, "question": f"What is {expression}?", "template": template,
                        "solution": " ".join(lines)})
             for i, (expression, lines, value) in enumerate(generate(template, split, count, seed))]
    return Arith(items)
