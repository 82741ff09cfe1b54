"""Fréchet distance (FID's formula) and kernel inception distance (KID) between two feature sets.

Why float64 and an eigendecomposition: FD needs tr((Σ1 Σ2)^½); with few samples the covariances are
singular and the product is not symmetric, where a generic `sqrtm` in float32 returns complex noise.
Σ1 Σ2 has the same eigenvalues as the symmetric PSD matrix Σ1^½ Σ2 Σ1^½, so the trace is the sum of the
square roots of that matrix's eigenvalues (clipped at 0), computed with `eigh` in float64.
KID (Bińkowski et al. 2018) is the unbiased MMD² with the cubic polynomial kernel, averaged over random
subsets: unlike FD it has no bias that depends on the number of samples, so it suits small N.
"""

from __future__ import annotations

import numpy as np


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean and (unbiased) covariance of (N, D) features, in float64."""
  f = np.asarray(features, np.float64)
  if f.ndim != 2 or len(f) < 2:
    raise ValueError(f"need (N >= 2, D) features, got shape {f.shape}")
  return f.mean(0), np.cov(f, rowvar=False)


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
  w, v = np.linalg.eigh((m + m.T) / 2)
  return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance_from_stats(mu1, sigma1, mu2, sigma2) -> float:
  """|μ1 − μ2|² + tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½)."""
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
  r1 = _sqrt_psd(s1)
  inner = np.linalg.eigvalsh(r1 @ s2 @ r1)
  tr_covmean = np.sqrt(np.clip(inner, 0, None)).sum()
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
  """FD between the Gaussians fitted to feature sets `a` and `b` ((N, D) and (M, D))."""
  return frechet_distance_from_stats(*gaussian_stats(a), *gaussian_stats(b))


def _poly_kernel(x, y):
  return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
  """Unbiased MMD² with k(x, y) = (x·y / d + 1)³."""
  m, n = len(x), len(y)
  kxx, kyy, kxy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
  return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
               - 2 * kxy.mean())


def kid(a: np.ndarray, b: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> dict:
  """KID: {"mean", "std"} of the unbiased MMD² over `subsets` random subsets of min(N, M, subset_size)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  size = min(len(a), len(b), subset_size)
  if size < 2:
    raise ValueError("KID needs at least 2 samples in each set")
  rng = np.random.default_rng(seed)
  values = [mmd2_unbiased(a[rng.choice(len(a), size, replace=False)], b[rng.choice(len(b), size, replace=False)])
            for _ in range(subsets)]
  return {"mean": float(np.mean(values)), "std": float(np.std(values)), "subset_size": size, "subsets": subsets}
