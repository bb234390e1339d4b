"""Answer extraction and grading: gold answers pass, wrong ones fail, odd formats are read right."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from sharpen.tasks import Item, load_task
from sharpen.tasks.base import canonical_number
from sharpen.tasks.data import ENV_VAR, read_jsonl
from sharpen.tasks.game24 import Game24, all_puzzles, check, evaluate, solve
from sharpen.tasks.gsm8k import GSM8K, format_solution
from sharpen.tasks.hendrycks_math import MATH, as_integer, last_boxed
from sharpen.tasks.mmlu import MMLU
from sharpen.tasks.prontoqa import ProntoQA

DATA = os.environ.get(ENV_VAR)
needs_data = pytest.mark.skipif(not DATA, reason=f"{ENV_VAR} is not set: the benchmark files are not available")


def item(answer: str) -> Item:
    return Item(id="x", prompt="", answer=answer)


# ---- GSM8K ------------------------------------------------------------------------------------------------

@needs_data
def test_every_gsm8k_test_gold_grades_correct():
    task = GSM8K([])
    rows = read_jsonl(Path(DATA) / "gsm8k/test.jsonl", {"question": str, "answer": str})
    assert len(rows) == 1319
    for _, row in rows:
        gold = row["answer"].rpartition("####")[2].strip().replace(",", "")
        it = item(gold)
        assert task.grade(it, format_solution(row["answer"])), row["answer"]
        assert task.grade(it, row["answer"]), row["answer"]  # the raw rationale ending '#### N'
        assert not task.grade(it, f"The answer is {int(gold) + 1}.")


@pytest.mark.parametrize("text,expected", [
    ("She makes 9 * 2 = $18 every day. The answer is 18.", "18"),
    ("The answer is $1,000.", "1000"),
    ("The answer is 18.00 dollars.", "18"),
    ("The answer is 2/2 = 1.", "1"),
    ("So 16 - 3 - 4 = 9 eggs remain, and 9 * 2 = 18.", "18"),
    ("The answer is -5.", "-5"),
    ("5-3=2", "2"),
    ("The answer is: 0.50", "0.5"),
    ("#### 1,234", "1234"),
    ("The answer is not clear, maybe 12", "12"),
    ("no numbers here", None),
    ("The answer is ٣.", None),  # unicode digits are not read as numbers
    ("", None),
])
def test_gsm8k_extraction(text, expected):
    assert GSM8K([]).extract(text) == expected


def test_gsm8k_same_answer_is_numeric():
    task = GSM8K([])
    assert task.same_answer("18.00", "18") and task.same_answer("$1,000", "1000") and task.same_answer("-0", "0")
    assert not task.same_answer("18.5", "18") and not task.same_answer("nan", "nan")
    assert canonical_number("1,00") is None and canonical_number("1e5") is None and canonical_number("inf") is None


# ---- MATH -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    (r"so $\boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),
    (r"\boxed{1} then \boxed{ {2}+\{3\} }", r"{2}+\{3\}"),
    (r"\fbox{7}", "7"),
    (r"\boxed 5.", "5"),
    (r"\boxed{3} and \boxed{4", "3"),  # an unclosed last box falls back to the last complete one
    (r"\boxed{", None),
    ("no box", None),
])
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("12", "12"), (r"1,\!000", "1000"), ("120^\\circ", "120"), (r"\$40", "40"), ("-3", "-3"), ("25\\%", "25"),
    ("0,1", None), (r"\frac{1}{2}", None), ("4.5", None), (r"2\sqrt{2}", None),
])
def test_integer_answers(text, expected):
    assert as_integer(text) == expected


@pytest.mark.parametrize("text,expected", [
    (r"Thus $x = 4$. The answer is $\boxed{4}$.", "4"),
    (r"The answer is $\dfrac{9}{7}$.", r"\frac{9}{7}"),
    ("The answer is 10. Next we", "10"),
    ("The difference is 10.", "10"),
    ("no answer", None),
])
def test_math_extraction(text, expected):
    assert MATH([]).extract(text) == expected


@needs_data
def test_math_gold_answers_grade_correct_against_themselves():
    task = load_task("math")
    for it in task.items:
        boxed = it.meta["boxed"]
        assert task.grade(it, f"We find the value. The answer is $\\boxed{{{boxed}}}$."), boxed
        assert task.grade(it, f"The answer is {it.answer}."), boxed
        assert not task.grade(it, f"The answer is $\\boxed{{{int(it.answer) + 1}}}$."), boxed


def test_math_equivalence_goes_through_math_verify():
    task = MATH([])
    assert task.grade(item("4"), r"The answer is $\boxed{\frac{8}{2}}$.")
    assert task.grade(item("4"), r"The answer is $\boxed{\sqrt{16}}$.")
    assert task.grade(item("15000"), r"\boxed{\$15,\!000}")
    assert not task.grade(item("4"), r"\boxed{\frac{9}{2}}")
    assert not task.grade(item("4"), r"\boxed{x}")


# ---- MMLU and ProntoQA ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("Chitin makes the shell. The answer is (B).", "B"),
    ("The answer is D. It is the mortality rate.", "D"),
    ("The correct answer is option C.", "C"),
    ("Answer: A", "A"),
    ("The answer is (B). Actually the answer is (C).", "C"),
    ("The answer is (B). Note the answer is a guess.", "B"),  # 'a' is an article, not choice A
    ("The answer is E.", None),
    ("I think B", None),
])
def test_mmlu_extraction(text, expected):
    assert MMLU([], ()).extract(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("Max is a yumpus. Tumpuses are not sour. Max is not sour. The answer is False.", "False"),
    (" True.\n\nQuestion:", "True"),
    ("The answer is TRUE", "True"),
    ("It is false. The answer is true.", "True"),
    ("untrue falsehood", None),
    ("", None),
])
def test_prontoqa_extraction(text, expected):
    assert ProntoQA([]).extract(text) == expected


# ---- Game of 24 -------------------------------------------------------------------------------------------

def test_solver_finds_exactly_the_csv_puzzles():
    puzzles = all_puzzles()
    assert len(puzzles) == 1362 and puzzles == sorted(puzzles)
    assert solve([13, 13, 13, 13]) is None and solve([1, 1, 1, 1]) is None
    if DATA:
        with open(Path(DATA) / "game24/24.csv", encoding="utf-8") as f:
            rows = [tuple(sorted(map(int, r["Puzzles"].split()))) for r in csv.DictReader(f)]
        assert len(rows) == 1362 and set(rows) == set(puzzles)


def _wrong_value(expression: str) -> str:
    """The expression with one operator changed so that its value is no longer 24 (same numbers)."""
    for pos, ch in enumerate(expression):
        if ch in "+-*/":
            for other in "+-*/".replace(ch, ""):
                variant = expression[:pos] + other + expression[pos + 1:]
                result = evaluate(variant)
                if result is not None and result[0] != 24:
                    return variant
    raise AssertionError(f"no wrong-value variant of {expression}")


def _wrong_variants(expression: str, numbers: list[int]) -> list[str]:
    first = str(numbers[0])
    return [
        f"({expression}) + 1",  # extra number
        f"({expression}) * 13 / 13",  # extra numbers
        _wrong_value(expression),  # wrong value
        f"{first} * {first}",  # reused number, others missing
        f"({expression}) - {first} + {first}",  # a number used twice
        " * ".join(map(str, numbers[:3])),  # a number missing
    ]


def test_all_puzzles_solutions_accepted_and_wrong_ones_rejected():
    task = Game24([])
    for numbers in all_puzzles():
        numbers = list(numbers)
        gold = " ".join(map(str, numbers))
        expression = solve(numbers)
        assert task.grade(item(gold), f"Answer: {expression} = 24"), (numbers, expression)
        for wrong in _wrong_variants(expression, numbers):
            assert not task.grade(item(gold), f"Answer: {wrong} = 24"), (numbers, wrong)


def test_game24_missing_and_reused_numbers():
    assert check("(13 - 9) * (10 - 4)", [4, 9, 10, 13])
    assert not check("(13 - 9) * 6", [4, 9, 10, 13])  # 6 is not a puzzle number; 10 and 4 missing
    assert not check("(13 - 9) * (10 - 4) + 0 * 4", [4, 9, 10, 13])  # 4 used twice
    assert not check("4 * 6", [4, 6, 6])
    assert not check("(13 - 9) * (10 - 4) / (9 - 9)", [4, 9, 10, 13])
    assert evaluate("8 / (3 - 8 / 3)") == (24, [8, 3, 8, 3])
    assert evaluate("1 / 0") is None and evaluate("2 ** 3") is None and evaluate("(1") is None


@pytest.mark.parametrize("text,expected", [
    ("Answer: (13 - 9) * (10 - 4) = 24", "( 13 - 9 ) * ( 10 - 4 )"),
    ("steps...\nAnswer: 24 = (13 − 9) × (10 − 4).", "( 13 - 9 ) * ( 10 - 4 )"),
    (" 4 * 6\n", "4 * 6"),  # the prompt ends with 'Answer:', so the first line is the answer
    ("\n4 9 10 13\n4 9 10 13", None),  # numbers without operators are no expression
    ("Answer: I do not know", None),
    ("Answer: 24", None),
    ("", None),
])
def test_game24_extraction(text, expected):
    assert Game24([]).extract(text) == expected
