"""Timestep respacing: sample a model trained on T steps with any subset of them.

A respacing string picks which of the T training timesteps the sampler visits:
  "25"        25 steps spread evenly over [0, T-1] (both ends included)
  "10,10,5"   T split into 3 equal sections, strided to 10, 10 and 5 steps
  "ddim50"    the DDIM paper's fixed integer stride (T/50), starting at 0
  "fast27"    GLIDE's 27-step schedule for upsamplers
The betas of the kept subset are recomputed from the cumulative products (`respaced_betas`) so the
marginals q(x_t | x_0) at the kept steps are exactly those of the training process (improved DDPM).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def space_timesteps(num_timesteps: int, spec: str | int | Sequence[int]) -> list[int]:
  """The sorted training timesteps kept by respacing `spec` (see the module docstring)."""
  if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
    spec = str(int(spec))
  if not isinstance(spec, str):
    return _explicit_timesteps(num_timesteps, spec)
  text = spec.strip()
  if not text:
    raise ValueError("empty respacing string; use e.g. '25', 'ddim50', '10,10,5' or 'fast27'")
  if text == "fast27":
    steps = set(space_timesteps(num_timesteps, "10,10,3,2,2"))
    # GLIDE: drop the noisiest step, which causes DDIM artifacts, for one two steps earlier.
    steps.discard(num_timesteps - 1)
    steps.add(num_timesteps - 3)
    return sorted(steps)
  if text.startswith("ddim"):
    count = _parse_count(text[len("ddim"):], text)
    _check_count(count, num_timesteps, text)
    for stride in range(1, num_timesteps):
      if len(range(0, num_timesteps, stride)) == count:
        return list(range(0, num_timesteps, stride))
    raise ValueError(f"respacing {text!r}: no integer stride gives exactly {count} of {num_timesteps} steps; "
                     f"use a plain count such as '{count}' instead")
  counts = [_parse_count(part, text) for part in text.split(",")]
  _check_count(sum(counts), num_timesteps, text)
  return _sections(num_timesteps, counts, text)


def _parse_count(part: str, spec: str) -> int:
  try:
    count = int(part.strip())
  except ValueError:
    raise ValueError(f"bad respacing string {spec!r}; use e.g. '25', 'ddim50', '10,10,5' or 'fast27'") from None
  if count < 1:
    raise ValueError(f"respacing {spec!r} asks for {count} steps; every count must be at least 1")
  return count


def _check_count(count: int, num_timesteps: int, spec: str) -> None:
  if count > num_timesteps:
    raise ValueError(f"respacing {spec!r} asks for {count} steps but the model was trained with "
                     f"{num_timesteps}; ask for at most {num_timesteps}")


def _sections(num_timesteps: int, counts: list[int], spec: str) -> list[int]:
  """Splits [0, T) into len(counts) near-equal sections and strides each to its count (improved DDPM)."""
  size_per, extra = divmod(num_timesteps, len(counts))
  start, kept = 0, []
  for i, count in enumerate(counts):
    size = size_per + (1 if i < extra else 0)
    if size < count:
      raise ValueError(f"respacing {spec!r}: a section of {size} training steps cannot hold {count} steps")
    stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
    position = 0.0
    for _ in range(count):
      kept.append(start + round(position))
      position += stride
    start += size
  return sorted(set(kept))


def _explicit_timesteps(num_timesteps: int, steps: Sequence[int]) -> list[int]:
  try:
    kept = sorted({int(s) for s in steps})
  except (TypeError, ValueError):
    raise ValueError(f"respacing must be a string, an int or a list of timesteps, got {steps!r}") from None
  if not kept:
    raise ValueError("respacing with an empty list of timesteps")
  if kept[0] < 0 or kept[-1] >= num_timesteps:
    raise ValueError(f"respaced timesteps must lie in [0, {num_timesteps - 1}], got {kept[0]}..{kept[-1]}")
  return kept


def respaced_betas(alphas_cumprod: np.ndarray, kept: Sequence[int]) -> np.ndarray:
  """Betas of the process that visits only `kept`, preserving alpha_bar at each kept step."""
  betas, last = [], 1.0
  for t in kept:
    betas.append(1.0 - alphas_cumprod[t] / last)
    last = alphas_cumprod[t]
  return np.asarray(betas, dtype=np.float64)
