"""The paper's applications as embedding math: interpolations (slerp between CLIP image embeddings, and
between decoder latents) and text diffs; plus the decoder settings that DDIM inversion needs."""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from unclip_jax.errors import UserError
from unclip_jax.pipeline.settings import StageSampling, inversion_settings


def slerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
  """Spherical interpolation of directions with linearly interpolated norms; t = 0 / 1 give a / b exactly."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if t == 0:
    return a.astype(np.float32)
  if t == 1:
    return b.astype(np.float32)
  na, nb = np.linalg.norm(a, axis=-1, keepdims=True), np.linalg.norm(b, axis=-1, keepdims=True)
  ua, ub = a / na, b / nb
  dot = np.clip(np.sum(ua * ub, axis=-1, keepdims=True), -1.0, 1.0)
  theta = np.arccos(dot)
  small = theta < 1e-6
  s = np.where(small, 1.0, np.sin(theta))
  u = np.where(small, (1 - t) * ua + t * ub, (np.sin((1 - t) * theta) * ua + np.sin(t * theta) * ub) / s)
  return (u * ((1 - t) * na + t * nb)).astype(np.float32)


def interpolation_embeddings(a: np.ndarray, b: np.ndarray, frames: int) -> tuple[np.ndarray, np.ndarray]:
  """(fractions (K,), embeddings (K, E)): slerp from a to b; the ends are a and b exactly."""
  ts = np.linspace(0.0, 1.0, frames)
  ts[0], ts[-1] = 0.0, 1.0
  return ts, np.stack([slerp(a, b, float(t)) for t in ts])


def slerp_latents(a: np.ndarray, b: np.ndarray, fractions: Sequence[float]) -> np.ndarray:
  """Decoder latents (H, W, C) slerped as flat vectors at each fraction → (K, H, W, C)."""
  return np.stack([slerp(a.reshape(1, -1), b.reshape(1, -1), float(t)).reshape(a.shape) for t in fractions])


def textdiff_embeddings(image: np.ndarray, text_from: np.ndarray, text_to: np.ndarray,
                        strengths: Sequence[float]) -> np.ndarray:
  """The paper's text diffs: z_d = normalise(z_t(to) − z_t(from)); slerp(z_i, z_d·|z_i|, θ) per strength."""
  d = np.asarray(text_to, np.float64) - np.asarray(text_from, np.float64)
  norm = np.linalg.norm(d)
  if norm < 1e-8:
    raise UserError("--from and --to encode to the same text embedding; give two different captions")
  target = d / norm * np.linalg.norm(image)
  return np.stack([slerp(image, target, float(s)) for s in strengths])


def inversion_decoder_settings(decoder: StageSampling, has_stride: Callable[[str], bool],
                               log: Callable[[str], None]) -> StageSampling:
  """The decoder settings of inversion: deterministic DDIM with no clamp (`settings.inversion_settings`),
  and a plain step count N run as "ddimN" where such an even stride exists (`has_stride`). DDIM's even
  stride stops short of the last training steps; near t = T the cosine schedule's noise level jumps so
  steeply that inverting through t = 999 (where "N" respacings end) magnifies errors: with the trained
  tiny decoder, 100 steps reconstructed a shapes image to 76/255 mean error as "100" and to 3/255 as
  "ddim100"."""
  decoder = inversion_settings(decoder)
  if not decoder.steps.isdigit():
    return decoder
  if not has_stride(f"ddim{decoder.steps}"):
    log(f"note: no even stride gives {decoder.steps} decoder steps; they include the last training step, "
        "where inversion is badly conditioned")
    return decoder
  log(f"--invert: decoder steps {decoder.steps} run as ddim{decoder.steps} (an even stride that stops short "
      f"of t = 999, where inversion is badly conditioned)")
  return dataclasses.replace(decoder, steps=f"ddim{decoder.steps}")
