"""ProntoQA (Saparov and He 2023): true/false questions over a fictional ontology, the proof as chain of thought.

Paper subset: 256 items: the first 256 of `prontoqa/logiclm_dev.json` when a data directory is given, else 256
generated ones (`prontoqa_gen`). split="train" is always generated (another seed namespace), and the 1-shot
demonstration is a generated item of its own namespace, so it is never an evaluated item.
"""

from __future__ import annotations

import random
import re

from ..errors import SharpenError
from . import prontoqa_gen
from .base import STOP_AT_NEXT_EXAMPLE, Item, Task, tail
from .data import check_options, check_split, data_file, data_root, read_json_records, take

PAPER_SIZE = 256
TRAIN_SIZE = 2000
_FIELDS = {"context": str, "question": str, "answer": str, "explanation": list}
_QUESTION = re.compile(r"^.*?true or false\?\s*(.+)$", re.IGNORECASE | re.DOTALL)
_ANSWER_IS = re.compile(r"answer is:?\s*(true|false)\b", re.IGNORECASE)
_WORD = re.compile(r"\b(true|false)\b", re.IGNORECASE)


def format_question(context: str, statement: str) -> str:
    return f"Question: {context.strip()}\nTrue or false: {statement.strip()}\nAnswer:"


def _parse(record: dict, where: str) -> tuple[str, str, str]:
    """(statement, gold 'True'/'False', proof text) of a Logic-LLM style record."""
    match = _QUESTION.match(record["question"])
    if match is None or record["answer"] not in ("A", "B"):
        raise SharpenError(f"{where}: expected a 'true or false? <statement>' question and answer A or B; "
                           "fix or replace the file")
    if not all(isinstance(step, str) for step in record["explanation"]):
        raise SharpenError(f"{where}: explanation must be a list of sentences; fix or replace the file")
    return match.group(1).strip(), "True" if record["answer"] == "A" else "False", " ".join(record["explanation"])


class ProntoQA(Task):
    name = "prontoqa"
    stop = list(STOP_AT_NEXT_EXAMPLE)
    labels = ("True", "False")

    def __init__(self, items: list[Item]) -> None:
        self.items = items

    def extract(self, text: str) -> str | None:
        """'True' or 'False' after the last 'The answer is', else the last true/false word; None if neither."""
        text = tail(text)
        found = _ANSWER_IS.findall(text) or _WORD.findall(text)
        return found[-1].capitalize() if found else None


def load(data_dir=None, split: str = "test", limit: int | None = None, hops: int | None = None,
         seed: int = 0, **options) -> ProntoQA:
    """The paper's 256 items (file or generated) or generated training items; `hops`, `seed`: generated only."""
    check_split("prontoqa", split)
    check_options("prontoqa", options, ["hops", "seed"])
    root = data_root(data_dir) if split == "test" else None
    if root is not None and (hops is not None or seed != 0):
        raise SharpenError("prontoqa options hops and seed apply to generated items: drop them, or unset the "
                           "data directory to generate the test items")
    hops = 5 if hops is None else hops
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise SharpenError(f"prontoqa seed must be an integer, got {seed!r}")
    if isinstance(hops, bool) or not isinstance(hops, int) or not 1 <= hops <= prontoqa_gen.MAX_HOPS:
        raise SharpenError(f"prontoqa hops must be an integer from 1 to {prontoqa_gen.MAX_HOPS}, got {hops!r}")
    if root is not None:
        path = data_file(root, "prontoqa/logiclm_dev.json")
        records = [(f"{path}:{line}", r) for line, r in read_json_records(path, _FIELDS)]
        records = records[:PAPER_SIZE]
    else:
        count = PAPER_SIZE if split == "test" else TRAIN_SIZE
        count = count if limit is None else min(count, max(limit, 0))
        records = [(r["id"], r) for r in prontoqa_gen.generate(count, seed, hops, namespace=split)]
    demo = prontoqa_gen.generate_item(random.Random(f"prontoqa/demo/{hops}"), hops, "demo")
    statement, gold, proof = _parse(demo, "demo")
    header = f"{format_question(demo['context'], statement)} {proof} The answer is {gold}.\n\n"
    items = []
    for i, (where, record) in enumerate(records):
        statement, gold, proof = _parse(record, where)
        items.append(Item(id=f"prontoqa-{split}-{i}", prompt=header + format_question(record["context"], statement),
                          answer=gold, meta={"source": where, "statement": statement, "proof": proof,
                                             "context": record["context"]}))
    return ProntoQA(take(items, limit))
