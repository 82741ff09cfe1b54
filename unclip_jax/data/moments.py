"""Per-dimension running mean and population standard deviation, the statistics an embedded dataset records.

`python -m unclip_jax.embed` accumulates them batch by batch over every written image (and text)
embedding, per split and over all splits; the prior standardises CLIP image embeddings with them.
"""

from __future__ import annotations

import numpy as np


class Moments:
  """Per-dimension mean and population std over batches, merged in float64 (Chan et al.)."""

  def __init__(self, dim: int):
    self.count, self.mean, self.m2 = 0, np.zeros(dim), np.zeros(dim)

  def update(self, x: np.ndarray):
    """Adds a batch (n, dim)."""
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=0)
    self._combine(len(x), mean, ((x - mean) ** 2).sum(axis=0))

  def merge(self, other: Moments):
    """Adds everything `other` has seen."""
    self._combine(other.count, other.mean, other.m2)

  def _combine(self, count: int, mean: np.ndarray, m2: np.ndarray):
    if not count:
      return
    total = self.count + count
    delta = mean - self.mean
    self.mean = self.mean + delta * count / total
    self.m2 = self.m2 + m2 + delta ** 2 * self.count * count / total
    self.count = total

  @property
  def std(self) -> np.ndarray:
    return np.sqrt(self.m2 / max(self.count, 1))
