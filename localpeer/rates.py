"""Rates a user reads, each with its n and a 95% interval (METHOD.md §4).

    from localpeer.rates import Rate
    Rate.of(45, 100)   # Rate(successes=45, n=100, value=0.45, low=0.3561, high=0.5476)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Z95 = 1.959964  # the normal quantile of 0.975


@dataclass(frozen=True)
class Rate:
    """successes / n with the Wilson score interval (it stays inside [0, 1] and behaves at
    0 and n, where the normal approximation does not). Half successes count ties."""

    successes: float
    n: int
    value: float
    low: float
    high: float

    @classmethod
    def of(cls, successes: float, n: int, z: float = Z95) -> Rate:
        """Example: 45 of 100 -> 0.45, 95% interval [0.3561, 0.5476]."""
        if n <= 0:
            return cls(successes, 0, math.nan, math.nan, math.nan)
        p = successes / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        low = 0.0 if successes <= 0 else max(centre - half, 0.0)  # exact at the ends
        high = 1.0 if successes >= n else min(centre + half, 1.0)
        return cls(successes, n, p, low, high)

    def __str__(self) -> str:
        if not self.n:
            return "— (n = 0)"
        return f"{self.value:.0%} [{self.low:.0%}, {self.high:.0%}] (n = {self.n})"


@dataclass(frozen=True)
class Paired:
    """McNemar's exact test of a base-vs-trained change on the same items: `b` items were a
    success for base only, `c` for trained only; under no change each discordant item is a
    fair coin, so p is the two-sided binomial p of c successes in b + c trials.

    Example: b = 1, c = 6 -> p = 2 * (1 + 7) / 2**7 = 0.125."""

    n: int  # items both models were scored on
    b: int  # success for base only
    c: int  # success for trained only
    p: float

    @classmethod
    def of(cls, pairs: list[tuple[bool, bool]]) -> Paired:
        """pairs: (base success, trained success) per item."""
        b = sum(1 for x, y in pairs if x and not y)
        c = sum(1 for x, y in pairs if y and not x)
        return cls(len(pairs), b, c, mcnemar_p(b, c))

    def __str__(self) -> str:
        return f"McNemar p = {self.p:.3g} ({self.b} vs {self.c} discordant of {self.n})"


def mcnemar_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p: 2 P(X <= min(b, c)), X ~ Binomial(b + c, 1/2), at most 1."""
    m = b + c
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, i) for i in range(min(b, c) + 1)) / 2.0**m
    return min(1.0, 2.0 * tail)


def fisher_p(a: int, n1: int, c: int, n2: int) -> float:
    """Two-sided Fisher exact p for a/n1 vs c/n2 (different items: no pairing)."""
    from scipy.stats import fisher_exact

    return float(fisher_exact([[a, n1 - a], [c, n2 - c]]).pvalue)


def z_p(z: float) -> float:
    """Two-sided p of a standard normal z."""
    return math.erfc(abs(z) / math.sqrt(2.0))
