"""Hostile model output: every extractor and grader answers fast, never raises, never evaluates code."""

from __future__ import annotations

import io
import threading
import time
import tokenize
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sharpen
from sharpen.tasks import Item, mathcheck
from sharpen.tasks.arith import Arith
from sharpen.tasks.game24 import Game24, evaluate
from sharpen.tasks.gsm8k import GSM8K
from sharpen.tasks.hendrycks_math import MATH
from sharpen.tasks.mmlu import MMLU
from sharpen.tasks.prontoqa import ProntoQA

TASKS = [(GSM8K([]), "18"), (MATH([]), "4"), (ProntoQA([]), "True"), (MMLU([], ()), "B"),
         (Game24([]), "4 9 10 13"), (Arith([]), "18")]
DEEP = 100_000
MB = 1_000_000
HOSTILE = {
    "power tower": "9**9**9**9",
    "deep parens": "(" * DEEP,
    "deep balanced": "(" * DEEP + "1" + ")" * DEEP,
    "1 MB digits": "1" * MB,
    "1 MB letters": "x" * MB,
    "unicode digits": "The answer is ٣٤٥ and \\boxed{٣}",
    "nan inf": "The answer is NaN. \\boxed{inf} Answer: -inf",
    "exponent literal": "The answer is 1e999999999",
    "unclosed box": "\\boxed{",
    "many unclosed boxes": "\\boxed{" * DEEP,
    "box then deep braces": "\\boxed{" + "{" * DEEP,
    "latex tower": "\\boxed{9^{9^{9^{9}}}}",
    "latex tower 2": "The answer is $10^{10^{10}}$.",
    "factorial": "\\boxed{1000000!}",
    "expansion": "\\boxed{(x+1)^{1000}}",
    "tetration": "\\boxed{2^{2^{2^{2^{2^{2}}}}}}",
    "big sum": "\\boxed{\\sum_{n=1}^{10^{10}} n}",
    "binomial": "\\boxed{\\binom{100000}{50000}}",
    "nested roots": "\\boxed{" + "\\sqrt{" * 11 + "2" + "}" * 11 + "}",
    "division by zero": "\\boxed{\\frac{1}{0}} Answer: 24 / (4 - 4) + 9 * 10 * 13",
    "huge integer": "The answer is " + "9" * 100_000,
    "huge grouped integer": "The answer is " + "999," * 30_000 + "999",
    "huge integer box": "\\boxed{" + "9" * 5000 + "}",
    "long sum": "Answer: " + "1+" * DEEP + "1",
    "long unary": "Answer: " + "-" * DEEP + "4",
    "deep answer": "Answer: " + "(" * DEEP + "4" + ")" * DEEP,
    "big product": "Answer: 99999999999999999999 * 99999999999999999999 = 24",
    "python power": "Answer: 4 ** 9 ** 10 ** 13",
    "letters": "The answer is " + "A" * MB,
    "true spam": "true " * 200_000,
    "control chars": "\x00\x01\x1b[31m\ud800 The answer is \ufeff(B)\u202e",
    "code": "Answer: __import__('os').system('echo hacked')",
    "spaces after cue": "The answer is" + " " * DEEP + "x",  # regex backtracking
    "tabs and colons": "answer is :\t" * 50_000,
    "comma digits": "1," * DEEP,
    "minus run": "-" * DEEP + "1",
    "equals run": "Answer: " + "=" * DEEP,
    "open boxes with spaces": "\\boxed " * 50_000,
}


def _check_one(task, gold: str, text: str) -> None:
    answer = task.extract(text)
    assert answer is None or isinstance(answer, str)
    assert task.grade(Item(id="x", prompt="", answer=gold), text) in (True, False)


@pytest.fixture(scope="module")
def warm_checker():
    mathcheck.warm()


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_adversarial_inputs_get_a_verdict_within_a_second(case, warm_checker):
    text = HOSTILE[case]
    for task, gold in TASKS:
        for variant in (text, "The answer is " + text, text + "\nThe answer is \\boxed{" + text[-300:] + "}"):
            mathcheck.warm()  # a worker killed by the previous case is replaced before the clock starts
            start = time.perf_counter()
            _check_one(task, gold, variant)
            elapsed = time.perf_counter() - start
            assert elapsed < 1.0, (task.name, case, elapsed)


def test_hostile_answers_are_wrong_not_right(warm_checker):
    math = MATH([])
    assert not math.grade(Item("x", "", "4"), HOSTILE["latex tower"])
    assert not math.grade(Item("x", "", "4"), HOSTILE["factorial"])
    assert not Game24([]).grade(Item("x", "", "4 9 10 13"), HOSTILE["code"])
    assert math.grade(Item("x", "", "4"), r"after all that, \boxed{\frac{8}{2}}")  # the checker still works


def test_math_checker_works_outside_the_main_thread(warm_checker):
    results = {}

    def work():
        start = time.perf_counter()
        results["bomb"] = mathcheck.equivalent("9^{9^{9^{9}}}", "4")
        results["bomb_seconds"] = time.perf_counter() - start
        mathcheck.warm()
        results["fine"] = mathcheck.equivalent("\\frac{12}{3}", "4")

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=60)
    assert results == {"bomb": False, "bomb_seconds": results["bomb_seconds"], "fine": True}
    assert results["bomb_seconds"] < 1.0


def test_checker_rejects_oversized_input_without_parsing():
    assert not mathcheck.fits("1" * (mathcheck.MAX_CHARS + 1))
    assert not mathcheck.fits("{" * (mathcheck.MAX_DEPTH + 1))
    assert mathcheck.fits("\\frac{\\sqrt{3}}{2}")
    assert mathcheck.equivalent("{" * 50 + "4" + "}" * 50, "4") is False


FRAGMENTS = ["The answer is ", "answer is: ", "Answer: ", "####", "\\boxed{", "\\boxed ", "\\fbox{", "}", "{", "(",
             ")", "$", "=", " = 24", "24", "4", "9", "10", "13", "0", "-", "+", "*", "/", "**", "^", "^{", "\\frac{",
             "\\sqrt{", "\\dfrac", "!", "1,000", ",", ".", ". ", "\n", "\n\n", "True", "false", "(B)", "C", "a",
             "٣", "NaN", "inf", "1e99", "\\$", "\\%", "^\\circ", "x", "×", "÷", "−", " ", "\\", "Question:"]
texts = st.one_of(
    st.text(max_size=300),
    st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=4)), max_size=40).map("".join),
)


@pytest.mark.hypothesis_ci
@settings(max_examples=10_000, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(texts)
def test_every_extractor_and_grader_survives_generated_text(text):
    for task, gold in TASKS:
        _check_one(task, gold, text)


@st.composite
def expressions(draw, depth: int = 0) -> tuple[str, Fraction]:
    """A random well-formed expression with its exact value (None when it divides by zero)."""
    if depth > 3 or draw(st.booleans()):
        n = draw(st.integers(0, 99))
        return str(n), Fraction(n)
    (left, a), (right, b) = draw(expressions(depth + 1)), draw(expressions(depth + 1))
    op = draw(st.sampled_from("+-*/"))
    if a is None or b is None or (op == "/" and b == 0):
        value = None
    else:
        value = {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else None}[op]
    return f"({left} {op} {right})", value


@pytest.mark.hypothesis_ci
@settings(max_examples=1000, deadline=None, derandomize=True, database=None)
@given(expressions())
def test_arithmetic_parser_agrees_with_fractions(pair):
    text, value = pair
    result = evaluate(text)
    assert (result is None) if value is None else (result is not None and result[0] == value)


def test_package_never_evaluates_code():
    """No eval()/exec()/compile() calls in the package (a method like `model.eval()` is fine)."""
    root = Path(sharpen.__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        tokens = [t for t in tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
                  if t.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE)]
        for prev, tok, nxt in zip(tokens, tokens[1:], tokens[2:], strict=False):
            if tok.type == tokenize.NAME and tok.string in ("eval", "exec", "compile", "__import__") \
                    and nxt.string == "(" and prev.string not in (".", "def"):
                offenders.append(f"{path.relative_to(root.parent)}:{tok.start[0]}")
    assert offenders == []
