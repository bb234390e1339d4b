"""GSM8K (Cobbe et al. 2021): grade-school word problems with a numeric answer after '####'.

Paper subset: the first 256 test problems. Prompt: one worked train problem (never an evaluated item), then
the question; the model should end with 'The answer is N.'.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import SharpenError
from .base import STOP_AT_NEXT_EXAMPLE, Item, Task, canonical_number, tail
from .data import check_options, check_split, data_file, data_root, hub_rows, read_jsonl, take

PAPER_SIZE = 256
DEMO_INDEX = 0  # the train row used as the 1-shot demonstration; left out of split="train"
_FIELDS = {"question": str, "answer": str}

# A number as written in a response: thousands commas, optional decimals, ASCII digits only.
_NUMBER = re.compile(r"-?(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?")
_ANSWER_IS = re.compile(r"answer is|####", re.IGNORECASE)
_SENTENCE_END = re.compile(r"\n|\.(?![0-9])")


def format_solution(answer: str) -> str:
    """A GSM8K rationale as one paragraph ending 'The answer is N.' (calculator notes <<...>> removed)."""
    body, _, final = answer.rpartition("####")
    body = re.sub(r"<<[^>]*>>", "", body)
    body = " ".join(line.strip() for line in body.splitlines() if line.strip())
    return f"{body} The answer is {final.strip()}."


def format_question(question: str) -> str:
    return f"Question: {question.strip()}\nAnswer:"


def _numbers(text: str) -> list[str]:
    found = []
    for m in _NUMBER.finditer(text):
        token = m.group()
        # '5-3' is a subtraction, not the number -3
        if token.startswith("-") and m.start() > 0 and (text[m.start() - 1].isalnum() or text[m.start() - 1] in ")"):
            token = token[1:]
        found.append(token)
    return found


class GSM8K(Task):
    name = "gsm8k"
    stop = list(STOP_AT_NEXT_EXAMPLE)

    def __init__(self, items: list[Item]) -> None:
        self.items = items

    def extract(self, text: str) -> str | None:
        """The number after the last 'The answer is' (after its last '=' if it shows a sum), else the last number."""
        text = tail(text)
        cues = list(_ANSWER_IS.finditer(text))
        if cues:
            span = text[cues[-1].end():]
            end = _SENTENCE_END.search(span)
            span = span[: end.start()] if end else span
            if "=" in span:
                span = span.rpartition("=")[2]
            found = _numbers(span)
            if found:
                return canonical_number(found[0])
        found = _numbers(text)
        return canonical_number(found[-1]) if found else None

    def same_answer(self, answer: str, gold: str) -> bool:
        """Numeric equality of decimals: '18.00' == '18', '$1,000' == '1000'."""
        a, g = canonical_number(answer), canonical_number(gold)
        return a is not None and a == g


def _rows(root: Path | None, split: str) -> list[tuple[str, dict]]:
    """(where, row) pairs; `where` names the file and line for error messages."""
    if root is None:
        return [(f"openai/gsm8k:{split} row {i + 1}", row)
                for i, row in enumerate(hub_rows("openai/gsm8k", "main", split))]
    path = data_file(root, f"gsm8k/{split}.jsonl")
    return [(f"{path}:{line}", row) for line, row in read_jsonl(path, _FIELDS)]


def _gold(row: dict, where: str) -> str:
    gold = canonical_number(row["answer"].rpartition("####")[2])
    if "####" not in row["answer"] or gold is None:
        raise SharpenError(f"{where}: the answer does not end with '#### <number>'; fix or replace the file")
    return gold


def load(data_dir=None, split: str = "test", limit: int | None = None, **options) -> GSM8K:
    """The paper's GSM8K subset (first 256 test problems), or the train split (all but the demonstration)."""
    check_split("gsm8k", split)
    check_options("gsm8k", options, [])
    root = data_root(data_dir)
    train = _rows(root, "train")
    demo = train[DEMO_INDEX][1]
    header = f"{format_question(demo['question'])} {format_solution(demo['answer'])}\n\n"
    if split == "train":
        rows = train
        indices = [i for i in range(len(rows)) if i != DEMO_INDEX]
    else:
        rows = _rows(root, "test")
        indices = list(range(min(PAPER_SIZE, len(rows))))
    items = []
    for i in take(indices, limit):
        where, row = rows[i]
        items.append(Item(id=f"gsm8k-{split}-{i}", prompt=header + format_question(row["question"]),
                          answer=_gold(row, where),
                          meta={"index": i, "source": where, "question": row["question"],
                                "solution": format_solution(row["answer"])}))
    return GSM8K(items)
