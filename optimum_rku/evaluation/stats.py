"""Intervals for exact match: how sure a difference between two models on the same problems is.

Two pruned models answer the *same* problems, so their difference is judged problem by problem (paired): a paired
bootstrap over problems gives the interval of the accuracy difference, and McNemar's exact test the probability of
the discordant problems splitting as unevenly under no difference. A single accuracy gets a Wilson interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class PairedDifference:
    """Accuracy of `a` minus accuracy of `b` on the same problems, with a bootstrap interval and McNemar's p-value."""

    difference: float
    low: float
    high: float
    problems: int
    #: problems only `a` got right / only `b` got right
    only_a: int
    only_b: int
    p_value: float

    def to_dict(self) -> dict[str, float | int]:
        """A JSON-ready dict."""
        return asdict(self)


def _as_bools(name: str, values: Sequence[bool | int]) -> torch.Tensor:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a sequence of 0/1 or bools, got {type(values).__name__}")
    if any(v not in (0, 1) for v in values):
        raise ValueError(f"{name} must hold only 0/1 or bools")
    return torch.tensor([int(v) for v in values], dtype=torch.float64)


def mcnemar_p_value(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar test: the binomial probability of a split of the discordant pairs at least this
    uneven when each is a fair coin."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_difference(
    a: Sequence[bool | int],
    b: Sequence[bool | int],
    confidence: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> PairedDifference:
    """Accuracy difference a - b over the same problems (element i of each is problem i) with a percentile paired
    bootstrap interval (problems resampled with replacement, `resamples` times, seeded) and McNemar's p-value."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise ValueError(f"resamples must be an int >= 1, got {resamples!r}")
    first, second = _as_bools("a", a), _as_bools("b", b)
    if len(first) != len(second) or len(first) == 0:
        raise ValueError(f"a and b must be non-empty and of one length (the same problems), got {len(a)} and {len(b)}")
    delta = first - second
    generator = torch.Generator().manual_seed(seed)
    means = []
    for start in range(0, resamples, 1000):  # bounded memory: 1000 resamples x problems at a time
        count = min(1000, resamples - start)
        index = torch.randint(0, len(delta), (count, len(delta)), generator=generator)
        means.append(delta[index].mean(dim=1))
    sample = torch.cat(means)
    tail = (1 - confidence) / 2
    low, high = torch.quantile(sample, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    only_a, only_b = int((delta > 0).sum()), int((delta < 0).sum())
    return PairedDifference(
        difference=float(delta.mean()),
        low=low,
        high=high,
        problems=len(delta),
        only_a=only_a,
        only_b=only_b,
        p_value=mcnemar_p_value(only_a, only_b),
    )


def wilson_interval(correct: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of an accuracy of `correct` out of `total`."""
    if total <= 0 or not 0 <= correct <= total:
        raise ValueError(f"need 0 <= correct <= total and total > 0, got {correct} of {total}")
    z = _normal_quantile(1 - (1 - confidence) / 2)
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)


def _normal_quantile(q: float) -> float:
    """The standard normal quantile (torch's erfinv, so no scipy)."""
    return math.sqrt(2) * float(torch.erfinv(torch.tensor(2 * q - 1, dtype=torch.float64)))
