"""Binomial proportions with Wilson score intervals.

Why Wilson: evaluation cells here hold tens to hundreds of images and rates near 0 or 1 are common (a
model that never handles negation); the normal-approximation interval collapses to zero width there, and
Wilson's stays inside [0, 1] with close to nominal coverage.
"""

from __future__ import annotations

import math
from typing import Iterable

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
  """The Wilson score interval of `successes` out of `n` (both ends in [0, 1]); (0, 1) when n is 0."""
  if n < 0 or not 0 <= successes <= n:
    raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
  if n == 0:
    return 0.0, 1.0
  p = successes / n
  denom = 1 + z * z / n
  centre = (p + z * z / (2 * n)) / denom
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
  return max(0.0, centre - half), min(1.0, centre + half)


def proportion(flags: Iterable[bool]) -> dict:
  """{"rate", "k", "n", "ci95": [lo, hi]} of boolean outcomes."""
  flags = [bool(f) for f in flags]
  k, n = sum(flags), len(flags)
  lo, hi = wilson_interval(k, n)
  return {"rate": k / n if n else float("nan"), "k": k, "n": n, "ci95": [lo, hi]}
