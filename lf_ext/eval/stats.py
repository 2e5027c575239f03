"""Confidence intervals and paired tests for accuracies (stdlib only).

- :func:`wilson_interval`: the 95 % Wilson score interval of k correct out of n (good at small n and
  near 0 or 1, unlike the normal approximation);
- :func:`paired_bootstrap`: the interval of a difference of two accuracies on the same questions,
  resampling questions;
- :func:`mcnemar`: the exact two-sided McNemar test on the questions where two systems disagree;
- :func:`paired_difference`: both for ``a`` against ``b``, as the benchmarks report them.
"""

from __future__ import annotations

import math
import random
from typing import Sequence

Z95 = 1.959963984540054


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """(low, high) of the Wilson score interval; (0, 1) when n is 0."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low = 0.0 if correct == 0 else max(0.0, centre - half)  # exact ends: no float residue
    high = 1.0 if correct == n else min(1.0, centre + half)
    return low, high


def paired_bootstrap(a: Sequence[bool], b: Sequence[bool], samples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % interval of ``mean(a) - mean(b)`` over questions resampled with replacement."""
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} and {len(b)}")
    n = len(a)
    if n == 0:
        return 0.0, 0.0
    diffs = [int(x) - int(y) for x, y in zip(a, b)]
    rng = random.Random(seed)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(samples))
    return means[int(0.025 * samples)], means[min(samples - 1, int(0.975 * samples))]


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> dict[str, float | int]:
    """Exact two-sided McNemar test: ``only_a``/``only_b`` questions right in one system only, and the p-value
    of the sign test on them (1.0 when they never disagree)."""
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} and {len(b)}")
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    m = only_a + only_b
    if m == 0:
        return {"only_a": 0, "only_b": 0, "p_value": 1.0}
    tail = sum(math.comb(m, k) for k in range(0, min(only_a, only_b) + 1)) / 2**m
    return {"only_a": only_a, "only_b": only_b, "p_value": min(1.0, 2 * tail)}


def accuracy_row(correct: Sequence[bool]) -> dict[str, float | int]:
    """``{"accuracy", "n", "ci_low", "ci_high"}`` of a list of per-question outcomes."""
    k, n = sum(bool(c) for c in correct), len(correct)
    low, high = wilson_interval(k, n)
    return {"accuracy": k / n if n else 0.0, "n": n, "ci_low": low, "ci_high": high}


def paired_difference(a: Sequence[bool], b: Sequence[bool]) -> dict:
    """``a`` minus ``b`` on the same questions: ``difference``, its 95 % bootstrap interval ``difference_ci``,
    and the McNemar test (``only_a``, ``only_b``, ``p_value``)."""
    low, high = paired_bootstrap(a, b)
    return {"difference": (sum(bool(x) for x in a) - sum(bool(x) for x in b)) / max(1, len(a)), "difference_ci": [low, high],
            **mcnemar(a, b)}  # fmt: skip
