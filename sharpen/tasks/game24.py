"""Game of 24: combine four numbers with + - * / to make 24, each number used exactly once.

Puzzles come from `game24/24.csv` (1,362 rows ranked by human solve time; rows 1000-1361 are the test split,
rows 0-999 train), or without data from the project's own solver: every solvable multiset of four numbers
from 1 to 13 (exactly 1,362), in lexicographic order. Zero-shot prompt, as in the paper. Grading parses the
answer with a small recursive-descent parser over Fractions (never eval): only integers, + - * / and
parentheses, each puzzle number exactly once, value exactly 24.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from fractions import Fraction
from functools import lru_cache
from itertools import combinations_with_replacement

from ..errors import SharpenError
from .base import Item, Task, tail
from .data import check_options, check_split, data_file, data_root, read_csv, take

TARGET = 24
TEST_ROWS = range(1000, 1362)
TRAIN_ROWS = range(0, 1000)
MAX_EXPRESSION_CHARS = 200  # an answer is about 20 characters; longer ones are not parsed
MAX_DEPTH = 16  # parenthesis nesting accepted (a 4-number expression needs 3)
_ALIASES = str.maketrans({"×": "*", "÷": "/", "−": "-", "x": "*", "X": "*", "·": "*"})
_TOKEN = re.compile(r"[0-9]+|[-+*/()]")
_ANSWER = re.compile(r"answer\s*:", re.IGNORECASE)

PROMPT = ("Use the numbers {numbers} and basic arithmetic operations (+ - * /) to obtain 24. "
          "Use each number exactly once.\nAnswer:")


# ---- solver -----------------------------------------------------------------------------------------------

def _splits(numbers: tuple[int, ...]):
    """Each way to split a multiset in two non-empty parts, once (the first number stays left)."""
    n = len(numbers)
    for mask in range(1, 1 << n):
        if mask & 1 and mask != (1 << n) - 1:
            yield (tuple(numbers[i] for i in range(n) if mask >> i & 1),
                   tuple(numbers[i] for i in range(n) if not mask >> i & 1))


@lru_cache(maxsize=4096)
def _reach(numbers: tuple[int, ...]) -> dict[Fraction, str]:
    """Every value an expression over `numbers` (each once) can take, with one such expression."""
    if len(numbers) == 1:
        return {Fraction(numbers[0]): str(numbers[0])}
    out: dict[Fraction, str] = {}
    for left, right in _splits(numbers):
        for a, ea in _reach(left).items():
            for b, eb in _reach(right).items():
                out.setdefault(a + b, f"({ea} + {eb})")
                out.setdefault(a * b, f"({ea} * {eb})")
                out.setdefault(a - b, f"({ea} - {eb})")
                out.setdefault(b - a, f"({eb} - {ea})")
                if b:
                    out.setdefault(a / b, f"({ea} / {eb})")
                if a:
                    out.setdefault(b / a, f"({eb} / {ea})")
    return out


def solve(numbers: Sequence[int], target: int = TARGET) -> str | None:
    """An expression that makes `target` from `numbers` (each once), or None when there is none.

    The last operation splits the numbers in two parts; for each value `a` of one part the value `b` the
    other part must reach is determined, so the top level is a lookup rather than a product of both tables.
    """
    nums, t = tuple(sorted(numbers)), Fraction(target)
    if len(nums) == 1:
        return str(nums[0]) if nums[0] == t else None
    for left, right in _splits(nums):
        other = _reach(right)
        for a, ea in _reach(left).items():
            needs = [(t - a, "{a} + {b}"), (a - t, "{a} - {b}"), (a + t, "{b} - {a}")]
            if a:
                needs += [(t / a, "{a} * {b}"), (a / t, "{a} / {b}"), (a * t, "{b} / {a}")]
            for b, form in needs:
                if b in other and (b or "/ {b}" not in form):
                    return form.format(a=ea, b=other[b])
    return None


def all_puzzles(low: int = 1, high: int = 13) -> list[tuple[int, ...]]:
    """Every solvable multiset of four numbers from low..high, in lexicographic order (1,362 for 1..13)."""
    return [p for p in combinations_with_replacement(range(low, high + 1), 4) if solve(p) is not None]


# ---- safe arithmetic --------------------------------------------------------------------------------------

def tokenize(expression: str) -> list[str] | None:
    """Tokens of an arithmetic expression, or None when it holds anything else (or is too long or deep)."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        return None
    text = expression.translate(_ALIASES)
    tokens = _TOKEN.findall(text)
    if "".join(tokens) != "".join(text.split()) or not tokens:
        return None  # a character outside digits, operators and parentheses
    depth = 0
    for token in tokens:
        depth += token == "("
        depth -= token == ")"
        if depth > MAX_DEPTH or depth < 0:
            return None
    return tokens if depth == 0 else None


class _Parser:
    """expr := term (('+'|'-') term)*; term := unary (('*'|'/') unary)*; unary := ('-'|'+')* primary;
    primary := integer | '(' expr ')'. Recursion only through parentheses, whose depth is capped."""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens, self.pos, self.numbers = tokens, 0, []

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def expr(self) -> Fraction:
        value = self.term()
        while self.peek() in ("+", "-"):
            value = value + self.term() if self.take() == "+" else value - self.term()
        return value

    def term(self) -> Fraction:
        value = self.unary()
        while self.peek() in ("*", "/"):
            if self.take() == "*":
                value *= self.unary()
            else:
                divisor = self.unary()
                if divisor == 0:
                    raise ValueError("division by zero")
                value /= divisor
        return value

    def unary(self) -> Fraction:
        sign = 1
        while self.peek() in ("-", "+"):
            sign = -sign if self.take() == "-" else sign
        return sign * self.primary()

    def primary(self) -> Fraction:
        token = self.peek()
        if token is None:
            raise ValueError("unexpected end")
        self.take()
        if token == "(":
            value = self.expr()
            if self.peek() != ")":
                raise ValueError("missing )")
            self.take()
            return value
        if token.isdigit() and len(token) <= 4:
            self.numbers.append(int(token))
            return Fraction(int(token))
        raise ValueError(f"unexpected {token!r}")


def evaluate(expression: str) -> tuple[Fraction, list[int]] | None:
    """(exact value, numbers used) of an arithmetic expression, or None if it is not one (or divides by 0)."""
    tokens = tokenize(expression)
    if tokens is None:
        return None
    parser = _Parser(tokens)
    try:
        value = parser.expr()
    except ValueError:
        return None
    if parser.pos != len(tokens):
        return None
    return value, parser.numbers


def check(expression: str, numbers: Sequence[int], target: int = TARGET) -> bool:
    """True when `expression` uses exactly `numbers` (each once) with + - * / and equals `target`."""
    result = evaluate(expression)
    return result is not None and sorted(result[1]) == sorted(numbers) and result[0] == target


# ---- task -------------------------------------------------------------------------------------------------

def parse_puzzle(text: str) -> list[int] | None:
    parts = text.split()
    if len(parts) != 4 or not all(p.isdigit() and len(p) <= 3 for p in parts):
        return None
    return [int(p) for p in parts]


class Game24(Task):
    name = "game24"
    stop = ["\n\n", "Use the numbers"]

    def __init__(self, items: list[Item]) -> None:
        self.items = items

    def extract(self, text: str) -> str | None:
        """The expression on the last 'Answer:' line ('= 24' dropped); without one, the response's first line
        (the prompt itself ends with 'Answer:'). None unless it is an arithmetic expression."""
        text = tail(text)
        cues = list(_ANSWER.finditer(text))
        line = text[cues[-1].end():] if cues else text.lstrip()
        line = line.split("\n", 1)[0].strip().strip("$`").strip().rstrip(".").strip()
        sides = [side.strip() for side in line.split("=")]
        candidates = [side for side in sides if side and side != str(TARGET)]
        if not candidates:
            return None
        tokens = tokenize(candidates[0])
        if tokens is None or evaluate(candidates[0]) is None:
            return None
        return " ".join(tokens)

    def same_answer(self, answer: str, gold: str) -> bool:
        """`gold` is the puzzle ('4 9 10 13'): any correct expression for it is a right answer."""
        numbers = parse_puzzle(gold)
        return numbers is not None and check(answer, numbers)


def _puzzles(root, split: str) -> list[tuple[str, list[int]]]:
    if root is None:
        puzzles = [(f"solver #{i}", list(p)) for i, p in enumerate(all_puzzles())]
    else:
        path = data_file(root, "game24/24.csv")
        puzzles = []
        for line, row in read_csv(path, ["Puzzles"]):
            numbers = parse_puzzle(row["Puzzles"])
            if numbers is None:
                raise SharpenError(f"{path}:{line}: expected four numbers like '1 1 4 6' in column Puzzles, "
                                   f"got {row['Puzzles']!r}; fix or replace the file")
            puzzles.append((f"{path}:{line}", numbers))
    rows = TEST_ROWS if split == "test" else TRAIN_ROWS
    return [(where, p) for i, (where, p) in enumerate(puzzles) if i in rows]


def load(data_dir=None, split: str = "test", limit: int | None = None, **options) -> Game24:
    """Rows 1000-1361 (test) or 0-999 (train) of the puzzle list, zero-shot prompts."""
    check_split("game24", split)
    check_options("game24", options, [])
    root = data_root(data_dir)
    first = TEST_ROWS.start if split == "test" else TRAIN_ROWS.start
    items = []
    for k, (where, numbers) in enumerate(take(_puzzles(root, split), limit)):
        puzzle = " ".join(map(str, numbers))
        items.append(Item(id=f"game24-{split}-{first + k}", prompt=PROMPT.format(numbers=puzzle), answer=puzzle,
                          meta={"numbers": numbers, "source": where, "solution": solve(numbers)}))
    return Game24(items)
