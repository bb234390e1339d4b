"""ProntoQA-style items (Saparov and He 2023), generated deterministically from a seed.

Each item is a fictional ontology: a chain of nine concepts, each a kind of the next, eight of them with a
property, one distractor concept carrying the opposite of the queried property, and an entity that belongs to
one concept of the chain. The question asks whether the entity has the property of the concept `hops - 1`
steps up the chain (or its negation); the explanation is the proof, in the format of the Logic-LLM release.
"""

from __future__ import annotations

import random

CONCEPTS = ("wumpus", "yumpus", "zumpus", "dumpus", "rompus", "numpus", "tumpus", "vumpus", "impus", "jompus")
FAMILIES = (  # one adjective per family at most along a chain, so no two properties clash
    ("blue", "red", "brown", "orange"), ("small", "large"), ("metallic", "wooden", "liquid"),
    ("hot", "cold", "temperate"), ("sour", "sweet", "bitter", "spicy", "salty"), ("fruity", "earthy", "floral"),
    ("happy", "nervous", "feisty", "angry"), ("kind", "mean", "amenable", "aggressive"), ("bright", "dull"),
    ("opaque", "transparent"), ("luminous",), ("shy",),
)
NAMES = ("Alex", "Fae", "Max", "Polly", "Rex", "Sally", "Sam", "Stella", "Wren")
CHAIN = 9  # concepts in the chain; the top one has no property
MAX_HOPS = CHAIN - 1


def _plural(concept: str) -> str:
    return concept + "es"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _property_rule(rng: random.Random, concept: str, adjective: str, negated: bool) -> str:
    neg = "not " if negated else ""
    return rng.choice([f"{_plural(concept).capitalize()} are {neg}{adjective}.",
                       f"Each {concept} is {neg}{adjective}.", f"Every {concept} is {neg}{adjective}."])


def _kind_rule(rng: random.Random, concept: str, parent: str) -> str:
    return rng.choice([f"{_plural(concept).capitalize()} are {_plural(parent)}.",
                       f"Each {concept} is {_article(parent)} {parent}.",
                       f"Every {concept} is {_article(parent)} {parent}."])


def generate_item(rng: random.Random, hops: int = 5, item_id: str = "") -> dict:
    """One item as a dict with the Logic-LLM fields: id, context, question, options, answer (A/B), explanation."""
    if not 1 <= hops <= MAX_HOPS:
        raise ValueError(f"hops must be 1..{MAX_HOPS}")
    names = list(CONCEPTS)
    rng.shuffle(names)
    chain, distractor = names[:CHAIN], names[CHAIN]
    families = rng.sample(FAMILIES, CHAIN - 1)
    props = [(rng.choice(family), rng.random() < 0.35) for family in families]  # (adjective, negated)
    start = rng.randrange(0, CHAIN - hops)  # the entity's concept
    target = start + hops - 1  # the concept whose property is asked
    entity = rng.choice(NAMES)

    rules: list[str] = []
    kind_rules, prop_rules = {}, {}
    for i in range(CHAIN - 1):
        prop_rules[i] = _property_rule(rng, chain[i], *props[i])
        kind_rules[i] = _kind_rule(rng, chain[i], chain[i + 1])
        rules += [prop_rules[i], kind_rules[i]]
    adjective, negated = props[target]
    rules.insert(rng.randrange(len(rules) + 1), _property_rule(rng, distractor, adjective, not negated))
    context = " ".join(rules + [f"{entity} is {_article(chain[start])} {chain[start]}."])

    proof = [f"{entity} is {_article(chain[start])} {chain[start]}."]
    for i in range(start, target):
        proof += [kind_rules[i], f"{entity} is {_article(chain[i + 1])} {chain[i + 1]}."]
    proof += [prop_rules[target], f"{entity} is {'not ' if negated else ''}{adjective}."]
    asked_negated = rng.random() < 0.5
    statement = f"{entity} is {'not ' if asked_negated else ''}{adjective}."
    return {"id": item_id, "context": context,
            "question": f"Is the following statement true or false? {statement}",
            "options": ["A) True", "B) False"], "answer": "A" if asked_negated == negated else "B",
            "explanation": proof}


def generate(n: int, seed: int = 0, hops: int = 5, namespace: str = "test") -> list[dict]:
    """`n` items; item i depends only on (namespace, seed, hops, i), so a longer list extends a shorter one."""
    return [generate_item(random.Random(f"prontoqa/{namespace}/{seed}/{hops}/{i}"), hops,
                          f"gen-{namespace}-{seed}-{i}") for i in range(n)]
