"""The small task interface: items with prompts and gold answers, stop strings, extraction and grading."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
    extracted answer with the gold one through `same_answer`.
    """

    name: str = ""
    stop: list[str] = []
    items: list[Item]

    def extract(self, text: str) -> str | None:
        """The response's final answer in canonical form, or None when it gives none."""
        raise NotImplementedError

    def same_answer(self, answer: str, gold: str) -> bool:
        return answer == gold

    def grade(self, item: Item, text: str) -> bool:
        answer = self.extract(text)
        return answer is not None and self.same_answer(answer, item.answer)
