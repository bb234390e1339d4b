"""MATH (Hendrycks et al. 2021): competition problems; the final answer is the last \\boxed{...} of the solution.

Paper subset: the first 256 test problems whose final answer is an integer. The 1-shot demonstration is
written by hand (it is no MATH problem). Answers are compared with math_verify, bounded by `mathcheck`.
"""

from __future__ import annotations

import re

from ..errors import SharpenError
from . import mathcheck
from .base import STOP_AT_NEXT_EXAMPLE, Item, Task, canonical_number, tail
from .data import check_options, check_split, data_file, data_root, hub_rows, read_jsonl, take

PAPER_SIZE = 256
HUB_REPO = "DigitalLearningGmbH/MATH-lighteval"  # a mirror of hendrycks/competition_math, same test order
MAX_ANSWER_CHARS = mathcheck.MAX_CHARS
_FIELDS = {"problem": str, "solution": str}

DEMO_QUESTION = "What is the sum of all positive divisors of 12?"
DEMO_SOLUTION = ("The positive divisors of 12 are 1, 2, 3, 4, 6 and 12. Their sum is "
                 "$1 + 2 + 3 + 4 + 6 + 12 = 28$. The answer is $\\boxed{28}$.")

_BOX = re.compile(r"\\(?:boxed|fbox)\b")
_ANSWER_IS = re.compile(r"answer is:?", re.IGNORECASE)
_NUMBER = re.compile(r"(?<![0-9.])-?[0-9]+(?:\.[0-9]+)?(?![0-9])")
# Ways of writing an integer that carry no mathematics: thin spaces, {,} separators, dollars, degrees, percent.
_DECORATION = re.compile(r"\\[!,;: ]|\s|\\\$|\^\s*\{?\\circ\}?|\\%|\\text\{\s*\}")


def _closing_braces(text: str) -> dict[int, int]:
    """Index of each '{' -> index of its matching '}', in one pass (\\{ and \\} are literal braces)."""
    match, stack, i = {}, [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            match[stack.pop()] = i
        i += 1
    return match


def last_boxed(text: str) -> str | None:
    """Content of the last complete \\boxed{...} (or \\fbox, or '\\boxed 5'); None when there is none.

    Brace-matched, not a regex; linear in the length of `text` even when every box is left open.
    """
    closing = None
    for m in reversed(list(_BOX.finditer(text))):
        rest = m.end()
        while rest < len(text) and text[rest] == " ":
            rest += 1
        if rest < len(text) and text[rest] == "{":
            closing = _closing_braces(text) if closing is None else closing
            if rest in closing:
                return text[rest + 1: closing[rest]].strip()
        elif rest > m.end():  # '\\boxed 5': the argument is the next token
            token = re.match(r"[^\s$.,]+", text[rest:])
            if token:
                return token.group()
    return None


def clean_answer(answer: str) -> str:
    """Drop the math-mode dollars and a closing period around an extracted answer."""
    answer = answer.strip().rstrip(".").strip()
    if len(answer) >= 2 and answer.startswith("$") and answer.endswith("$"):
        answer = answer.strip("$").strip()
    return answer.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")


def as_integer(answer: str) -> str | None:
    """'1,\\!000' -> '1000', '120^\\circ' -> '120'; None unless the answer is an integer."""
    if len(answer) > MAX_ANSWER_CHARS:
        return None
    number = canonical_number(_DECORATION.sub("", answer.replace("{,}", ",")))
    return number if number is not None and "." not in number else None


class MATH(Task):
    name = "math"
    stop = list(STOP_AT_NEXT_EXAMPLE)

    def __init__(self, items: list[Item]) -> None:
        self.items = items

    def extract(self, text: str) -> str | None:
        """The last \\boxed{...}; else what follows the last 'The answer is' up to the end of its sentence;
        else the last number of the response (small base models often state the result without the cue)."""
        text = tail(text)
        boxed = last_boxed(text)
        cues = list(_ANSWER_IS.finditer(text))
        if boxed is not None:
            answer = boxed
        elif cues:
            span = text[cues[-1].end():].split("\n", 1)[0]
            answer = re.split(r"\.(?:\s|$)", span, maxsplit=1)[0]
        else:
            numbers = _NUMBER.findall(text)
            if not numbers:
                return None
            answer = numbers[-1]
        answer = clean_answer(answer)
        return answer if answer and len(answer) <= MAX_ANSWER_CHARS else None

    def same_answer(self, answer: str, gold: str) -> bool:
        """Exact for plain numbers; otherwise math_verify (e.g. '\\frac{8}{2}' == '4'), bounded in time."""
        a, g = canonical_number(answer), canonical_number(gold)
        if a is not None and g is not None:
            return a == g
        return mathcheck.equivalent(answer, gold)


def _gold(row: dict, where: str) -> str:
    boxed = last_boxed(row["solution"])
    if boxed is None:
        raise SharpenError(f"{where}: the solution has no \\boxed{{...}} answer; fix or replace the file")
    return boxed


def load(data_dir=None, split: str = "test", limit: int | None = None, **options) -> MATH:
    """The paper's MATH subset (first 256 integer-answer test problems); split="train" gives the test
    problems with integer answers after those 256 (the data has no train split; they are never evaluated)."""
    check_split("math", split)
    check_options("math", options, [])
    root = data_root(data_dir)
    if root is None:
        rows = [(f"{HUB_REPO}:test row {i + 1}", row) for i, row in enumerate(hub_rows(HUB_REPO, None, "test"))]
    else:
        path = data_file(root, "math/test.jsonl")
        rows = [(f"{path}:{line}", row) for line, row in read_jsonl(path, _FIELDS)]
    header = f"Question: {DEMO_QUESTION}\nAnswer: {DEMO_SOLUTION}\n\n"
    chosen = []
    for i, (where, row) in enumerate(rows):
        boxed = _gold(row, where)
        integer = as_integer(boxed)
        if integer is not None:
            chosen.append((i, where, row, boxed, integer))
    chosen = chosen[:PAPER_SIZE] if split == "test" else chosen[PAPER_SIZE:]
    items = [
        Item(id=f"math-{split}-{i}", prompt=f"{header}Question: {row['problem'].strip()}\nAnswer:", answer=integer,
             meta={"index": i, "source": where, "question": row["problem"], "boxed": boxed,
                   "level": row.get("level"), "type": row.get("type"), "solution": row["solution"]})
        for i, where, row, boxed, integer in take(chosen, limit)
    ]
    return MATH(items)
