"""Paired comparison of two training modes over the same seeds: the mean difference, its 95% t-interval, a
Wilcoxon signed-rank p-value, and the verdict read from the interval (not from one standard deviation).

With ``d_i = a_i - b_i`` over ``n`` paired seeds: mean ``m``, sample std ``s``, standard error ``s / sqrt(n)``,
interval ``m +- t_{0.975, n-1} * s / sqrt(n)``. A mode **wins** when the whole interval is above zero, **loses**
when it is below, and is **within noise** otherwise.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class Paired:
    """``mean`` difference, ``std`` of the differences, 95% interval ``[low, high]``, Wilcoxon ``p`` (None below
    6 pairs, where it cannot reach 0.05), ``n`` pairs and the ``verdict``."""

    mean: float
    std: float
    low: float
    high: float
    p: float | None
    n: int

    @property
    def verdict(self) -> str:
        if self.n < 2:
            return "one seed: no verdict"
        if self.low > 0:
            return "wins"
        if self.high < 0:
            return "loses"
        return "within noise"


def paired(a: list[float], b: list[float], level: float = 0.95) -> Paired:
    """``a`` against ``b``, seed by seed (the lists are in seed order)."""
    from scipy import stats  # scipy ships with scikit-learn, already a dependency

    if len(a) != len(b) or not a:
        raise ValueError(f"paired comparison needs equal, non-empty lists, got {len(a)} and {len(b)} values")
    diffs = [x - y for x, y in zip(a, b)]
    n, mean = len(diffs), statistics.fmean(diffs)
    if n < 2:
        return Paired(mean, 0.0, mean, mean, None, n)
    std = statistics.stdev(diffs)
    half = stats.t.ppf(0.5 + level / 2, n - 1) * std / math.sqrt(n)
    p = None
    if n >= 6 and any(d != 0 for d in diffs):
        p = float(stats.wilcoxon(diffs, zero_method="zsplit").pvalue)
    return Paired(mean, std, mean - half, mean + half, p, n)


def seed_range(text: str) -> list[int]:
    """``'0-9'`` -> ``[0, ..., 9]``; ``'40-44'`` -> ``[40, ..., 44]``; ``'7'`` -> ``[7]``."""
    first, _, last = text.partition("-")
    try:
        lo, hi = int(first), int(last or first)
    except ValueError:
        raise ValueError(f"a seed range is A-B (e.g. 0-9), got {text!r}") from None
    if lo < 0 or hi < lo:
        raise ValueError(f"a seed range needs 0 <= A <= B, got {text!r}")
    return list(range(lo, hi + 1))
