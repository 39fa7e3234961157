"""Templated multi-step arithmetic word problems with GSM8K-style chain-of-thought answers."""

from __future__ import annotations

import hashlib
import random

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


def _one_problem(rng: random.Random, regime: str) -> tuple[str, str, int]:
    """Generate one problem as (question, answer, number of reasoning steps)."""
    r = _RANGES[regime]
    name, subj, obj_pron, poss = rng.choice(_PEOPLE)
    others = [p[0] for p in _PEOPLE if p[0] != name]
    things, thing = rng.choice(_OBJECTS)
    n_steps = rng.randint(*r["steps"])
    value = rng.randint(*r["start"])
    q = [f"{name} has {value} {things}."]
    a: list[str] = []
    use_price = rng.random() < 0.3
    op_steps = n_steps - 1 if use_price else n_steps
    while len(a) < op_steps:
        remaining = op_steps - len(a)
        ops = ["add", "sub", "mul", "div"] + (["pack"] if remaining >= 2 else [])
        op = rng.choice(ops)
        if op == "add":
            k = rng.randint(*r["add"])
            if value + k > r["cap"]:
                continue
            q.append(
                rng.choice(
                    [
                        f"{_cap(subj)} buys {k} more {things}.",
                        f"{_cap(subj)} finds {k} more {things}.",
                        f"{rng.choice(others)} gives {obj_pron} {k} more {things}.",
                    ]
                )
            )
            a.append(f"{name} has {value} + {k} = {value + k} {things}.")
            value += k
        elif op == "sub":
            if value < 2:
                continue
            k = rng.randint(1, min(value - 1, r["add"][1]))
            q.append(
                rng.choice(
                    [
                        f"{_cap(subj)} loses {k} {things}.",
                        f"{_cap(subj)} gives {k} {things} to {rng.choice(others)}.",
                        f"{_cap(subj)} sells {k} {things}.",
                    ]
                )
            )
            a.append(f"{name} has {value} - {k} = {value - k} {things}.")
            value -= k
        elif op == "mul":
            m = rng.randint(*r["mul"])
            if value * m > r["cap"]:
                continue
            q.append(f"Then {subj} ends up with {m} times as many {things}.")
            a.append(f"{name} has {value} * {m} = {value * m} {things}.")
            value *= m
        elif op == "div":
            divisors = [m for m in range(2, r["mul"][1] + 1) if value % m == 0 and value // m >= 1]
            if not divisors:
                continue
            m = rng.choice(divisors)
            q.append(f"{_cap(subj)} splits {poss} {things} into {m} equal groups and keeps one group.")
            a.append(f"{name} keeps {value} / {m} = {value // m} {things}.")
            value //= m
        else:
            packs = rng.randint(*r["packs"])
            per = rng.randint(*r["per_pack"])
            if value + packs * per > r["cap"]:
                continue
            q.append(f"{_cap(subj)} buys {packs} packs of {things} with {per} {things} in each pack.")
            a.append(f"The packs hold {packs} * {per} = {packs * per} {things}.")
            a.append(f"{name} has {value} + {packs * per} = {value + packs * per} {things}.")
            value += packs * per
    if use_price:
        p = rng.randint(*r["price"])
        while value * p > r["price_cap"] and p > 1:
            p -= 1
        q.append(f"Each {thing} sells for {p} dollars.")
        q.append(f"How much money does {name} get for selling all of {poss} {things}?")
        a.append(f"{name} gets {value} * {p} = {value * p} dollars.")
        value *= p
    else:
        q.append(f"How many {things} does {name} have now?")
    a.append(f"#### {value}")
    return " ".join(q), "\n".join(a), n_steps


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
