"""Generated ProntoQA items are well formed: the context entails the answer and the explanation proves it.

The checker here is independent of the generator; it is validated on the published Logic-LLM items too.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from sharpen.tasks import prontoqa_gen
from sharpen.tasks.data import ENV_VAR

DATA = os.environ.get(ENV_VAR)
_RULE = re.compile(r"^(?:(?:Each|Every) (\w+) is|(\w+)es are) (not )?(?:an? )?(\w+?)(?:es)?\.$")
_FACT = re.compile(r"^(\w+) is (not )?(?:an? )?(\w+)\.$")


def _singular(word: str) -> str:
    word = word.lower()
    return word[:-2] if word.endswith("uses") else word


def _parse_rules(context: str, concepts: set[str]):
    kinds, props = {}, {}
    sentences = re.findall(r"[^.]+\.", context)
    for sentence in sentences[:-1]:
        m = _RULE.match(sentence.strip())
        assert m, sentence
        subject = _singular(m.group(1) or m.group(2))
        negated, obj = bool(m.group(3)), _singular(m.group(4))
        if obj in concepts:
            assert not negated and subject not in kinds, sentence
            kinds[subject] = obj
        else:
            props.setdefault(subject, []).append((obj, negated))
    fact = _FACT.match(sentences[-1].strip())
    return kinds, props, fact.group(1), _singular(fact.group(3))


def check_item(item: dict, concepts: set[str]) -> None:
    kinds, props, entity, concept = _parse_rules(item["context"], concepts)
    statement = item["question"].split("? ", 1)[1]
    m = _FACT.match(statement)
    assert m and m.group(1) == entity
    asked_negated, adjective = bool(m.group(2)), m.group(3)
    # forward chaining: walk up the kinds from the entity's concept and collect what it inherits
    derived, seen, current = {}, set(), concept
    while current is not None and current not in seen:
        seen.add(current)
        for adj, negated in props.get(current, []):
            derived.setdefault(adj, negated)
        current = kinds.get(current)
    assert adjective in derived, "the context must decide the statement"
    truth = derived[adjective] == asked_negated
    assert item["answer"] == ("A" if truth else "B")
    # the explanation: the entity fact, then (rule from the context, conclusion) pairs ending in the statement
    steps, sentences = item["explanation"], {s.strip() for s in re.findall(r"[^.]+\.", item["context"])}
    assert steps[0] in sentences and len(steps) % 2 == 1
    current = concept
    for rule, conclusion in zip(steps[1::2], steps[2::2], strict=True):
        assert rule in sentences, rule
        r = _RULE.match(rule)
        assert _singular(r.group(1) or r.group(2)) == current, rule
        obj = _singular(r.group(4))
        c = _FACT.match(conclusion)
        assert c and c.group(1) == entity and _singular(c.group(3)) == obj and bool(c.group(2)) == bool(r.group(3))
        current = obj
    assert current == adjective and (steps[-1] == statement) == truth


def test_generated_items_are_proved_by_their_explanation():
    concepts = set(prontoqa_gen.CONCEPTS)
    items = prontoqa_gen.generate(300, seed=0) + prontoqa_gen.generate(50, seed=7, hops=3, namespace="train")
    for item in items:
        check_item(item, concepts)
    hops5 = prontoqa_gen.generate(20)
    assert all(len(item["explanation"]) == 11 for item in hops5)
    answers = [item["answer"] for item in items]
    assert 0.35 < answers.count("A") / len(answers) < 0.65


@pytest.mark.skipif(not DATA, reason=f"{ENV_VAR} is not set: the benchmark files are not available")
def test_checker_accepts_the_published_items():
    records = json.loads((Path(DATA) / "prontoqa/logiclm_dev.json").read_text())
    concepts = set(prontoqa_gen.CONCEPTS)
    for record in records:
        check_item(record, concepts)


def test_checker_rejects_a_wrong_answer():
    item = prontoqa_gen.generate(1)[0]
    flipped = dict(item, answer="B" if item["answer"] == "A" else "A")
    with pytest.raises(AssertionError):
        check_item(flipped, set(prontoqa_gen.CONCEPTS))


def test_checker_rejects_a_broken_proof():
    item = prontoqa_gen.generate(1)[0]
    steps = item["explanation"]
    for broken in (steps[:3] + steps[5:], steps[:-1] + ["Max is wooden."], [steps[0]] + steps[3:]):
        with pytest.raises(AssertionError):
            check_item(dict(item, explanation=broken), set(prontoqa_gen.CONCEPTS))
