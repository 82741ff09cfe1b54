"""Image-text agreement: CLIP score, R-precision and top-1 retrieval from embeddings.

Why these: CLIP score (100 × the cosine of image and caption embeddings, clipped at 0; Hessel et al.
2021 without their 2.5 factor) is the usual text-image alignment number; R-precision (the true caption
ranked first among itself and 99 others, as in AttnGAN / DALL-E evaluations) is less sensitive to the
evaluator's calibration, since it only compares captions for the same image.
"""

from __future__ import annotations

import numpy as np


def normalize(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Row-wise cosine similarity of (N, D) and (N, D)."""
  return (normalize(a) * normalize(b)).sum(-1)


def clip_score(image_embeds: np.ndarray, text_embeds: np.ndarray) -> float:
  """Mean of 100 × max(cos(image, its caption), 0)."""
  return float(np.mean(100 * np.clip(cosine(image_embeds, text_embeds), 0, None)))


def r_precision_hits(image_embeds: np.ndarray, true_text: np.ndarray, distractor_text: np.ndarray) -> np.ndarray:
  """bool (N,): whether each image's caption scores above every one of its distractors.

  `true_text` (N, D) holds each image's caption embedding, `distractor_text` (N, K, D) its K other
  captions (K = 99 for the usual "among 100"). A tie counts as a miss.
  """
  img = normalize(image_embeds)
  true = (img * normalize(true_text)).sum(-1)
  others = np.einsum("nd,nkd->nk", img, normalize(distractor_text))
  return true > others.max(axis=1)


def r_precision(image_embeds: np.ndarray, true_text: np.ndarray, distractor_text: np.ndarray) -> float:
  """Share of images whose caption ranks first among itself and its distractors (`r_precision_hits`)."""
  return float(np.mean(r_precision_hits(image_embeds, true_text, distractor_text)))


def top1_retrieval(queries: np.ndarray, keys: np.ndarray, pool: int = 100) -> dict:
  """Query i retrieves key i among `pool` keys (i's block of `pool` consecutive rows; the last block is
  smaller when `pool` does not divide N) by cosine: {"top1", "pool"}."""
  q, k = normalize(queries), normalize(keys)
  n = len(q)
  hits = []
  for lo in range(0, n, pool):
    hi = min(n, lo + pool)
    if hi - lo < 2:  # a block of one has nothing to confuse it with
      continue
    sim = q[lo:hi] @ k[lo:hi].T
    hits.extend(sim.argmax(1) == np.arange(hi - lo))
  return {"top1": float(np.mean(hits)) if hits else float("nan"), "pool": min(pool, n), "n": len(hits)}
