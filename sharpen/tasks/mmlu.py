"""MMLU (Hendrycks et al. 2021): four-choice questions; answer letters A-D.

Paper subset: the whole test split of college_biology, college_physics and college_chemistry. The 1-shot
demonstration is the subject's first dev question; for the paper's three subjects it carries a hand-written
chain of thought (the dev split has none), for other subjects just the answer.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import SharpenError
from .base import STOP_AT_NEXT_EXAMPLE, Item, Task, tail
from .data import check_options, check_split, data_file, data_root, hub_rows, read_csv, take

PAPER_SUBJECTS = ("college_biology", "college_physics", "college_chemistry")
SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge", "college_biology",
    "college_chemistry", "college_computer_science", "college_mathematics", "college_medicine", "college_physics",
    "computer_security", "conceptual_physics", "econometrics", "electrical_engineering", "elementary_mathematics",
    "formal_logic", "global_facts", "high_school_biology", "high_school_chemistry", "high_school_computer_science",
    "high_school_european_history", "high_school_geography", "high_school_government_and_politics",
    "high_school_macroeconomics", "high_school_mathematics", "high_school_microeconomics", "high_school_physics",
    "high_school_psychology", "high_school_statistics", "high_school_us_history", "high_school_world_history",
    "human_aging", "human_sexuality", "international_law", "jurisprudence", "logical_fallacies", "machine_learning",
    "management", "marketing", "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios",
    "nutrition", "philosophy", "prehistory", "professional_accounting", "professional_law",
    "professional_medicine", "professional_psychology", "public_relations", "security_studies", "sociology",
    "us_foreign_policy", "virology", "world_religions",
)
LETTERS = "ABCD"
# split="train": dev questions (except the demonstration) plus the test split of a related subject that is
# not evaluated, so that SFT has more than four prompts per subject.
RELATED = {
    "college_biology": ("high_school_biology",), "college_physics": ("high_school_physics",),
    "college_chemistry": ("high_school_chemistry",), "college_mathematics": ("high_school_mathematics",),
    "college_computer_science": ("high_school_computer_science",),
}
# Chains of thought written for the first dev question of each paper subject (question text, answer letter).
RATIONALES = {
    "college_biology": (
        "Which of the following represents an accurate statement concerning arthropods?", "B",
        "Arthropod exoskeletons are made of chitin, not peptidoglycan, so A is wrong. Arthropods are a very "
        "successful phylum, so C is wrong, and they have paired, jointed appendages, so D is wrong. They do "
        "have an open circulatory system with a dorsal heart."),
    "college_physics": (
        "A refracting telescope consists of two converging lenses separated by 100 cm.", "A",
        "In a refracting telescope the focal lengths of the two lenses add up to their separation, so the "
        "objective has focal length 100 - 20 = 80 cm. The angular magnification is the ratio of the focal "
        "lengths, 80 / 20 = 4."),
    "college_chemistry": (
        "Which of the following statements about the lanthanide elements is NOT true?", "D",
        "The lanthanides are mostly +3, form complexes with high coordination numbers and react with acid to "
        "give hydrogen, so A, B and C are true. Because of the lanthanide contraction their atomic radii "
        "decrease from La to Lu, so D is not true."),
}

# Case-insensitive cue, upper-case letter: 'the answer is a ...' is an article, not choice A. No two
# adjacent \s* (a long run of spaces would make the regex backtrack quadratically).
_ANSWER = re.compile(r"(?i:answer(?: is)?\s*(?::\s*)?(?:option\s*)?)\(?([ABCD])\)?(?![A-Za-z0-9])")


def format_question(question: str, choices: list[str]) -> str:
    options = [f"{letter}. {choice.strip()}" for letter, choice in zip(LETTERS, choices, strict=True)]
    lines = [f"Question: {question.strip()}"] + options
    return "\n".join(lines) + "\nAnswer:"


class MMLU(Task):
    name = "mmlu"
    stop = list(STOP_AT_NEXT_EXAMPLE)
    labels = tuple(LETTERS)

    def __init__(self, items: list[Item], subjects: tuple[str, ...]) -> None:
        self.items = items
        self.subjects = subjects

    def extract(self, text: str) -> str | None:
        """The letter after the last 'answer is' / 'Answer:' ('(B)', 'B', 'option B'), or None."""
        found = _ANSWER.findall(tail(text))
        return found[-1] if found else None


def parse_subjects(subject: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    if subject is None:
        return PAPER_SUBJECTS
    names = subject.split(",") if isinstance(subject, str) else list(subject)
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in SUBJECTS]
    if unknown or not names:
        raise SharpenError(f"unknown MMLU subject {', '.join(unknown) or repr(subject)}: choose from "
                           f"{', '.join(SUBJECTS)}")
    return tuple(dict.fromkeys(names))


def _rows(root: Path | None, subject: str, split: str) -> list[tuple[str, dict]]:
    """(where, {question, choices, answer letter}) rows of one subject's split ('test' or 'dev')."""
    if root is None:
        rows = hub_rows("cais/mmlu", subject, split)
        out = []
        for i, row in enumerate(rows):
            where = f"cais/mmlu:{subject}:{split} row {i + 1}"
            choices, answer = row.get("choices"), row.get("answer")
            if not (isinstance(choices, list) and len(choices) == 4 and answer in range(4)):
                raise SharpenError(f"{where}: expected four choices and an answer 0-3")
            out.append((where, {"question": row["question"], "choices": [str(c) for c in choices],
                                "answer": LETTERS[answer]}))
        return out
    path = data_file(root, f"mmlu/{split}/{subject}_{split}.csv")
    columns = ["question", "choice0", "choice1", "choice2", "choice3", "answer"]
    out = []
    for line, row in read_csv(path, columns):
        where = f"{path}:{line}"
        if row["answer"].strip() not in ("0", "1", "2", "3"):
            raise SharpenError(f"{where}: answer must be 0-3, got {row['answer']!r}; fix or replace the file")
        out.append((where, {"question": row["question"], "choices": [row[f"choice{k}"] for k in range(4)],
                            "answer": LETTERS[int(row["answer"])]}))
    return out


def _header(subject: str, demo: dict) -> str:
    """The demonstration block: the subject's first dev question, answered."""
    known = RATIONALES.get(subject)
    if known and demo["question"].startswith(known[0]) and demo["answer"] == known[1]:
        answer = f"{known[2]} The answer is ({demo['answer']})."
    else:
        answer = f"The answer is ({demo['answer']})."
    return f"{format_question(demo['question'], demo['choices'])} {answer}\n\n"


def load(data_dir=None, split: str = "test", limit: int | None = None, subject=None, **options) -> MMLU:
    """The whole test split of each subject (default: the paper's three college subjects), or training prompts;
    `limit` takes the first items of each subject in equal shares."""
    check_split("mmlu", split)
    check_options("mmlu", options, ["subject"])
    subjects = parse_subjects(subject)
    root = data_root(data_dir)
    items = []
    for name in subjects:
        dev = _rows(root, name, "dev")
        if not dev:
            raise SharpenError(f"MMLU {name} has no dev questions for the demonstration; check the data")
        header = _header(name, dev[0][1])
        if split == "test":
            sources = [("test", name, _rows(root, name, "test"))]
        else:
            sources = [("dev", name, dev[1:])] + [("test", other, _rows(root, other, "test"))
                                                  for other in RELATED.get(name, ())]
        for part, source_subject, rows in sources:
            for i, (where, row) in enumerate(rows):
                index = i + 1 if part == "dev" else i
                items.append(Item(
                    id=f"mmlu-{source_subject}-{part}-{index}",
                    prompt=header + format_question(row["question"], row["choices"]), answer=row["answer"],
                    meta={"subject": name, "source": where, "question": row["question"],
                          "choices": row["choices"]}))
    return MMLU(spread(items, limit), subjects)


def spread(items: list[Item], limit: int | None) -> list[Item]:
    """The first `limit` items, shared as evenly as possible among the subjects (each keeps its own order), so
    that --limit 30 over three subjects is ten of each rather than thirty of the first."""
    take(items, limit)  # validates limit
    if limit is None or limit >= len(items):
        return items
    groups: dict[str, list[Item]] = {}
    for it in items:
        groups.setdefault(it.meta["subject"], []).append(it)
    counts = dict.fromkeys(groups, 0)
    while sum(counts.values()) < limit:
        for name, group in groups.items():  # one more from each subject that still has items, in turn
            if counts[name] < len(group) and sum(counts.values()) < limit:
                counts[name] += 1
    return [it for name, group in groups.items() for it in group[:counts[name]]]
