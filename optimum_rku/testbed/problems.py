"""Templated multi-step arithmetic word problems with GSM8K-style chain-of-thought answers."""

from __future__ import annotations

import hashlib
import random
from typing import NamedTuple

SPLITS = ("train", "test", "ood")

# (name, subject pronoun, object pronoun, possessive pronoun)
_PEOPLE = [
    ("Tom", "he", "him", "his"),
    ("Anna", "she", "her", "her"),
    ("Ben", "he", "him", "his"),
    ("Lucy", "she", "her", "her"),
    ("Sam", "he", "him", "his"),
    ("Mia", "she", "her", "her"),
    ("Jack", "he", "him", "his"),
    ("Emma", "she", "her", "her"),
    ("Leo", "he", "him", "his"),
    ("Sara", "she", "her", "her"),
    ("Max", "he", "him", "his"),
    ("Nora", "she", "her", "her"),
    ("Omar", "he", "him", "his"),
    ("Lily", "she", "her", "her"),
    ("Ravi", "he", "him", "his"),
    ("Zoe", "she", "her", "her"),
    ("Paul", "he", "him", "his"),
    ("Ella", "she", "her", "her"),
    ("Hugo", "he", "him", "his"),
    ("Ivy", "she", "her", "her"),
    ("Carl", "he", "him", "his"),
    ("Rosa", "she", "her", "her"),
    ("Dan", "he", "him", "his"),
    ("Kate", "she", "her", "her"),
]

# (plural, singular)
_OBJECTS = [
    ("apples", "apple"),
    ("marbles", "marble"),
    ("stickers", "sticker"),
    ("cookies", "cookie"),
    ("pencils", "pencil"),
    ("books", "book"),
    ("cards", "card"),
    ("shells", "shell"),
    ("coins", "coin"),
    ("balloons", "balloon"),
    ("oranges", "orange"),
    ("toy cars", "toy car"),
    ("stamps", "stamp"),
    ("candies", "candy"),
    ("buttons", "button"),
    ("eggs", "egg"),
]

# Numeric ranges per regime: start value, add/sub amount, multiplier, pack size, price, value cap.
_RANGES = {
    "small": {
        "start": (2, 60),
        "add": (1, 40),
        "mul": (2, 5),
        "packs": (2, 6),
        "per_pack": (2, 10),
        "price": (2, 9),
        "cap": 500,
        "price_cap": 999,
        "steps": (2, 4),
    },
    "large": {
        "start": (100, 999),
        "add": (10, 500),
        "mul": (2, 9),
        "packs": (2, 12),
        "per_pack": (5, 50),
        "price": (2, 20),
        "cap": 9999,
        "price_cap": 99999,
        "steps": (5, 6),
    },
}


def _hash_bucket(question: str) -> int:
    """Return a stable 0-9 bucket for a question so train and test are disjoint by construction."""
    return int(hashlib.sha256(question.encode("utf-8")).hexdigest()[:8], 16) % 10


def _split_of(question: str, n_steps: int) -> str:
    """Return which split a question belongs to (ood by step count, test/train by text hash)."""
    if n_steps >= 5:
        return "ood"
    return "test" if _hash_bucket(question) == 0 else "train"


def _cap(word: str) -> str:
    """Capitalize the first letter of a word."""
    return word[:1].upper() + word[1:]


class _Cast(NamedTuple):
    """Who a problem is about and what they hold: the words every sentence of it is built from."""

    name: str
    subj: str
    obj_pron: str
    poss: str
    others: list[str]
    things: str
    thing: str


#: (question sentence, answer lines, new value) of one operation, or None when it does not fit the current value
_Step = tuple[str, list[str], int] | None


def _add(rng: random.Random, r: dict, c: _Cast, value: int) -> _Step:
    """Someone gains k more (skipped when the total would pass the cap)."""
    k = rng.randint(*r["add"])
    if value + k > r["cap"]:
        return None
    question = rng.choice(
        [
            f"{_cap(c.subj)} buys {k} more {c.things}.",
            f"{_cap(c.subj)} finds {k} more {c.things}.",
            f"{rng.choice(c.others)} gives {c.obj_pron} {k} more {c.things}.",
        ]
    )
    return question, [f"{c.name} has {value} + {k} = {value + k} {c.things}."], value + k


def _sub(rng: random.Random, r: dict, c: _Cast, value: int) -> _Step:
    """Someone loses k (skipped below 2, so at least one is left)."""
    if value < 2:
        return None
    k = rng.randint(1, min(value - 1, r["add"][1]))
    question = rng.choice(
        [
            f"{_cap(c.subj)} loses {k} {c.things}.",
            f"{_cap(c.subj)} gives {k} {c.things} to {rng.choice(c.others)}.",
            f"{_cap(c.subj)} sells {k} {c.things}.",
        ]
    )
    return question, [f"{c.name} has {value} - {k} = {value - k} {c.things}."], value - k


def _mul(rng: random.Random, r: dict, c: _Cast, value: int) -> _Step:
    """The count is multiplied by m (skipped when the product would pass the cap)."""
    m = rng.randint(*r["mul"])
    if value * m > r["cap"]:
        return None
    question = f"Then {c.subj} ends up with {m} times as many {c.things}."
    return question, [f"{c.name} has {value} * {m} = {value * m} {c.things}."], value * m


def _div(rng: random.Random, r: dict, c: _Cast, value: int) -> _Step:
    """The count is split into m equal groups, one kept (skipped when no small m divides it)."""
    divisors = [m for m in range(2, r["mul"][1] + 1) if value % m == 0 and value // m >= 1]
    if not divisors:
        return None
    m = rng.choice(divisors)
    question = f"{_cap(c.subj)} splits {c.poss} {c.things} into {m} equal groups and keeps one group."
    return question, [f"{c.name} keeps {value} / {m} = {value // m} {c.things}."], value // m


def _pack(rng: random.Random, r: dict, c: _Cast, value: int) -> _Step:
    """Packs of `per` are bought: two reasoning steps (skipped when the total would pass the cap)."""
    packs = rng.randint(*r["packs"])
    per = rng.randint(*r["per_pack"])
    if value + packs * per > r["cap"]:
        return None
    question = f"{_cap(c.subj)} buys {packs} packs of {c.things} with {per} {c.things} in each pack."
    answer = [
        f"The packs hold {packs} * {per} = {packs * per} {c.things}.",
        f"{c.name} has {value} + {packs * per} = {value + packs * per} {c.things}.",
    ]
    return question, answer, value + packs * per


_OPERATIONS = {"add": _add, "sub": _sub, "mul": _mul, "div": _div, "pack": _pack}


def _one_problem(rng: random.Random, regime: str) -> tuple[str, str, int]:
    """Generate one problem as (question, answer, number of reasoning steps).

    The random draws must keep their order (the problems of a seed never change): an operation that does not fit
    the current value has still drawn its numbers, and the next operation is chosen after them.
    """
    r = _RANGES[regime]
    name, subj, obj_pron, poss = rng.choice(_PEOPLE)
    others = [p[0] for p in _PEOPLE if p[0] != name]
    things, thing = rng.choice(_OBJECTS)
    cast = _Cast(name, subj, obj_pron, poss, others, things, thing)
    n_steps = rng.randint(*r["steps"])
    value = rng.randint(*r["start"])
    q = [f"{name} has {value} {things}."]
    a: list[str] = []
    use_price = rng.random() < 0.3
    op_steps = n_steps - 1 if use_price else n_steps
    while len(a) < op_steps:
        remaining = op_steps - len(a)
        ops = ["add", "sub", "mul", "div"] + (["pack"] if remaining >= 2 else [])
        step = _OPERATIONS[rng.choice(ops)](rng, r, cast, value)
        if step is None:
            continue
        question, answer, value = step
        q.append(question)
        a.extend(answer)
    if use_price:
        q_price, a_price, value = _sell_all(rng, r, cast, value)
        q.extend(q_price)
        a.append(a_price)
    else:
        q.append(f"How many {things} does {name} have now?")
    a.append(f"#### {value}")
    return " ".join(q), "\n".join(a), n_steps


def _sell_all(rng: random.Random, r: dict, c: _Cast, value: int) -> tuple[list[str], str, int]:
    """The closing price step: (question sentences, answer line, money), the price lowered to stay under the cap."""
    p = rng.randint(*r["price"])
    while value * p > r["price_cap"] and p > 1:
        p -= 1
    question = [
        f"Each {c.thing} sells for {p} dollars.",
        f"How much money does {c.name} get for selling all of {c.poss} {c.things}?",
    ]
    return question, f"{c.name} gets {value} * {p} = {value * p} dollars.", value * p


def make_problems(n: int, seed: int = 0, split: str = "train") -> list[dict]:
    """Generate ``n`` distinct problems of a split, deterministic per (seed, split), so experiments are reproducible."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    rng = random.Random(f"optimum-rku-testbed-{seed}-{split}")
    regime = "large" if split == "ood" else "small"
    seen: set[str] = set()
    out: list[dict] = []
    while len(out) < n:
        question, answer, n_steps = _one_problem(rng, regime)
        if question in seen or _split_of(question, n_steps) != split:
            continue
        seen.add(question)
        out.append({"question": question, "answer": answer})
    return out


def format_prompt(question: str) -> str:
    """Return the 0-shot lm-evaluation-harness gsm8k prompt for a question."""
    return f"Question: {question}\nAnswer:"


def format_example(question: str, answer: str) -> str:
    """Return a full training example in the gsm8k prompt format (prompt followed by the answer)."""
    return f"Question: {question}\nAnswer: {answer}"


def extract_answer(text: str) -> str | None:
    """The number after the first ``#### `` in a completion, or None (the evaluator's strict extraction)."""
    from optimum_rku.evaluation.gsm8k import extract_answer as strict_answer

    return strict_answer(text, "strict")
