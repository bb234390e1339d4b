"""The generated arith task: templates, chain of thought, disjoint splits, extraction and grading."""

from __future__ import annotations

import pytest

from sharpen.errors import SharpenError
from sharpen.tasks import load_task
from sharpen.tasks.arith import LEVELS, parse_template, steps


def test_template_parsing_and_steps():
    assert parse_template("aa*b-cc") == ([2, 1, 2], ["*", "-"])
    assert parse_template("aa * bb") == ([2, 2], ["*"])
    # products first, then left to right; every intermediate shown
    assert steps([12, 3, 40], ["*", "-"]) == (["12 * 3 = 36.", "36 - 40 = -4."], -4)
    assert steps([86, 7, 21, 6], ["*", "-", "*"]) == (["86 * 7 = 602.", "21 * 6 = 126.", "602 - 126 = 476."], 476)
    assert steps([5, 2, 3], ["+", "*"])[1] == 11
    for bad in ["", "aa", "aa*", "*aa", "aa**bb", "aa/bb", "aaaaa*b", "a+b+c+d+e+f+g+h", "aa*b-c1"]:
        with pytest.raises(SharpenError, match="arith level"):
            parse_template(bad)


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_items_are_exact_and_splits_disjoint(level):
    splits = {s: load_task("arith", split=s, level=level, limit=300) for s in ("train", "validation", "test")}
    expressions = {s: {it.meta["expression"] for it in t.items} for s, t in splits.items()}
    for s, t in splits.items():
        assert len(expressions[s]) == len(t.items) == 300  # no repeats within a split
        for it in t.items[:50]:
            # eval of our own generated string (digits and + - *), never of model output
            assert int(it.answer) >= 0 and eval(it.meta["expression"]) == int(it.answer)
            assert t.grade(it, f"{it.meta['solution']} The answer is {it.answer}.")
            assert t.extract(it.prompt.rpartition("Answer:")[0] + "The answer is 7.") == "7"
    assert not expressions["train"] & expressions["validation"]
    assert not expressions["train"] & expressions["test"]
    assert not expressions["validation"] & expressions["test"]
    # the demonstration is no item of any split
    demo = splits["test"].items[0].prompt.split("\n")[0].removeprefix("Question: What is ").rstrip("?")
    assert all(demo not in e for e in expressions.values())


def test_other_seeds_stay_disjoint_and_deterministic():
    a = load_task("arith", split="test", limit=40, seed=1)
    b = load_task("arith", split="train", limit=2000, seed=7)
    assert not {it.meta["expression"] for it in a.items} & {it.meta["expression"] for it in b.items}
    assert [it.prompt for it in a.items] == [it.prompt for it in load_task("arith", split="test", limit=40,
                                                                          seed=1).items]
    # a longer list extends a shorter one
    assert [it.id for it in load_task("arith", limit=10).items] == [it.id for it in load_task("arith").items[:10]]


def test_grading_is_exact_and_bounded():
    task = load_task("arith", limit=1, level="aa*bb")
    item = task.items[0]
    gold = int(item.answer)
    assert task.grade(item, f"The answer is {gold}.")
    assert task.grade(item, f"so {gold - 1} + 1 = {gold}. The answer is {gold:,}.")
    assert not task.grade(item, f"The answer is {gold + 1}.")
    assert not task.grade(item, f"The answer is {gold}.5.")  # a decimal is not the integer
    assert not task.grade(item, "The answer is " + "9" * 100_000)
    assert not task.grade(item, "(" * 100_000)
    assert not task.grade(item, None)  # type: ignore[arg-type]
    assert task.extract("no number here") is None


def test_bad_options_are_refused():
    with pytest.raises(SharpenError, match="unknown split"):
        load_task("arith", split="dev")
    with pytest.raises(SharpenError, match="unknown option"):
        load_task("arith", hops=3)
    with pytest.raises(SharpenError, match="too few distinct"):
        load_task("arith", level="a+b", limit=500)
    with pytest.raises(SharpenError, match="limit"):
        load_task("arith", limit=-1)
