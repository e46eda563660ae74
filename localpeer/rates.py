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
        return cls(successes, n, p, max(centre - half, 0.0), min(centre + half, 1.0))

    def __str__(self) -> str:
        if not self.n:
            return "— (n = 0)"
        return f"{self.value:.0%} [{self.low:.0%}, {self.high:.0%}] (n = {self.n})"
