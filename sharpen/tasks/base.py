"""The small task interface: items with prompts and gold answers, stop strings, extraction and grading.

Model output is hostile input: it can be a megabyte long, nest parentheses 100k deep or spell numbers that
take minutes to build. Every extractor looks only at `tail(text)` and every parser caps what it accepts, so a
verdict always comes back quickly; anything outside the caps is graded incorrect.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

# The final answer sits at the end of a response; 4 KB is far more than any answer line needs.
TAIL_CHARS = 4096
# Where a base model's answer ends in the 'Question: ...\nAnswer: ...\n\n' format: at the blank line before
# the next example, at the next question, or when it starts another answer line without a question.
STOP_AT_NEXT_EXAMPLE = ["\n\n", "\nAnswer:", "Question:"]


def tail(text: str, chars: int = TAIL_CHARS) -> str:
    """The last `chars` characters of `text`: what extractors look at, so their cost is bounded."""
    return text[-chars:] if len(text) > chars else text


# A plain decimal number: ASCII digits only (no unicode digits, exponents, nan or inf), thousands commas allowed.
_PLAIN_NUMBER = re.compile(r"([+-]?)((?:[0-9]{1,3}(?:,[0-9]{3})+)|[0-9]+)?(?:\.([0-9]+))?")
MAX_NUMBER_CHARS = 64


def canonical_number(text: str) -> str | None:
    """'$1,000.50' -> '1000.5', '18.00' -> '18', '-0' -> '0'; None for anything but a plain decimal number.

    Equal canonical strings mean numerically equal decimals, and no big integer is ever built, so the cost
    is linear in the (capped) length.
    """
    text = text.strip().removeprefix("$").strip()
    if len(text) > MAX_NUMBER_CHARS:
        return None
    match = _PLAIN_NUMBER.fullmatch(text)
    if match is None or not (match.group(2) or match.group(3)):
        return None
    sign, whole, frac = match.group(1), (match.group(2) or "").replace(",", "").lstrip("0") or "0", match.group(3) or ""
    frac = frac.rstrip("0")
    number = whole + ("." + frac if frac else "")
    return number if sign != "-" or number == "0" else "-" + number


@dataclass(frozen=True)
class Item:
    """One evaluation example. `prompt` is the full text given to the model (demonstration included)."""

    id: str
    prompt: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


class Task:
    """Base class: a task is mostly data (items, prompt, stop strings) plus `extract` and `grade`.

    Subclasses set `name`, `stop`, `items` and implement `extract`; `grade` defaults to comparing the
    extracted answer with the gold one through `same_answer`. A task whose answers come from a closed set
    (True/False, A-D) names it in `labels`, so summaries can show the always-the-same-label baselines.
    """

    name: str = ""
    stop: list[str] = []
    labels: tuple[str, ...] | None = None
    items: list[Item]

    def stops(self, chat: bool) -> list[str]:
        """Stop strings of a response: the completion format's (`stop`) for raw prompts; none in chat mode, where
        the chat template's end of turn (an EOS token of the model) ends the answer, and a blank line or the word
        "Question:" inside a chat answer is part of it."""
        return [] if chat else list(self.stop)

    def extract(self, text: str) -> str | None:
        """The response's final answer in canonical form, or None when it gives none."""
        raise NotImplementedError

    def same_answer(self, answer: str, gold: str) -> bool:
        return answer == gold

    def grade(self, item: Item, text: str) -> bool:
        if not isinstance(text, str):
            return False
        answer = self.extract(text)
        return answer is not None and self.same_answer(answer, item.answer)

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, items={len(self.items)})"
