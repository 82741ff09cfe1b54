"""Precision / recall of generated samples (Kynkäänniemi et al. 2019) and a memorisation check.

Why k-NN manifolds: FD folds fidelity and diversity into one number; precision (the share of generated
samples inside the real data's manifold, estimated as the union of balls reaching each real sample's
k-th neighbour) measures fidelity, recall (the share of real samples inside the generated manifold)
measures coverage. Memorisation: a model that copies training images puts samples much closer to their
nearest training image than training images are to each other, which those distances show.
"""

from __future__ import annotations

import numpy as np


def pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Euclidean distances (N, M), in float64."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
  return np.sqrt(np.clip(d2, 0, None))


def knn_radii(features: np.ndarray, k: int) -> np.ndarray:
  """Each point's distance to its k-th nearest other point of the same set."""
  n = len(features)
  if n <= k:
    raise ValueError(f"k-NN radii need more than k = {k} points, got {n}")
  d = pairwise_distances(features, features)
  return np.sort(d, axis=1)[:, k]  # column 0 is the point itself


def _coverage(points: np.ndarray, manifold: np.ndarray, radii: np.ndarray) -> np.ndarray:
  return (pairwise_distances(points, manifold) <= radii[None, :]).any(axis=1)


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> dict:
  """{"precision", "recall", "k"}: shares of fake samples inside the real manifold and of real samples
  inside the fake one."""
  precision = _coverage(fake, real, knn_radii(real, k)).mean()
  recall = _coverage(real, fake, knn_radii(fake, k)).mean()
  return {"precision": float(precision), "recall": float(recall), "k": k}


def nearest_distances(points: np.ndarray, reference: np.ndarray) -> np.ndarray:
  """Each point's distance to its nearest reference point."""
  return pairwise_distances(points, reference).min(axis=1)


def memorisation(samples: np.ndarray, train: np.ndarray, quantile: float = 0.01) -> dict:
  """Samples' nearest-training-image distances against the training set's own nearest-neighbour
  distances (leave-one-out). Reports the median of each, their ratio, and the share of samples closer to
  a training image than the `quantile` of the training set's own distances ("copies"; about `quantile`
  for a model that does not copy)."""
  d = pairwise_distances(train, train)
  np.fill_diagonal(d, np.inf)
  train_nn = d.min(axis=1)
  sample_nn = nearest_distances(samples, train)
  threshold = float(np.quantile(train_nn, quantile))
  return {"sample_nn_median": float(np.median(sample_nn)), "train_nn_median": float(np.median(train_nn)),
          "ratio": float(np.median(sample_nn) / max(np.median(train_nn), 1e-12)),
          "copy_threshold": threshold, "quantile": quantile,
          "copy_rate": float(np.mean(sample_nn <= threshold))}
