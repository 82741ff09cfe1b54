"""Classifier-free guidance and the x0 clamps samplers apply before forming the next step.

Guidance runs the conditional and unconditional branches as ONE network call on a doubled batch
(Karlo's `guided_model_fn`; diffusers' unCLIP pipeline): [x, x] with [cond, uncond]. The guided output
is s·cond + (1−s)·uncond on the mean half of the output (eps, x0 or v); a learned variance half comes
from the conditional branch. Written this way, s = 1 reproduces the conditional output exactly.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

ModelFn = Callable[[jax.Array, jax.Array, Any], jax.Array]


def check_guidance_scale(scale) -> None:
  """Raises ValueError for a guidance scale that is not a finite number (when it can be checked)."""
  if scale is None or isinstance(scale, jax.core.Tracer):
    return
  try:
    value = float(np.asarray(scale))  # host-side: never creates a traced value inside jit
  except (TypeError, ValueError):
    raise ValueError(f"guidance scale must be a finite number, got {scale!r}") from None
  if not math.isfinite(value):
    raise ValueError(f"guidance scale must be a finite number, got {value}")


def _concat_trees(a, b):
  return jax.tree.map(lambda x, y: jnp.concatenate([x, y], axis=0), a, b)


def guided_model_fn(model_fn: ModelFn, cond: Any, uncond: Any, scale, *,
                    guided_channels: int | None = None) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """A model function of (x_t, t) that applies classifier-free guidance with one doubled-batch call.

  `cond` / `uncond` are pytrees of batch-first arrays (same structure) handed to `model_fn` as its
  third argument. `guided_channels` is the width of the mean part of the output (the data's channel
  count when the model also outputs a variance); None guides the whole output.
  """
  check_guidance_scale(scale)
  if jax.tree.structure(cond) != jax.tree.structure(uncond):
    raise ValueError("conditional and unconditional inputs must have the same structure")

  def fn(x, t):
    both = model_fn(jnp.concatenate([x, x], axis=0), jnp.concatenate([t, t], axis=0),
                    _concat_trees(cond, uncond))
    out_cond, out_uncond = jnp.split(both, 2, axis=0)
    s = jnp.asarray(scale, out_cond.dtype)
    if guided_channels is None:
      return s * out_cond + (1 - s) * out_uncond
    k = guided_channels
    mixed = s * out_cond[..., :k] + (1 - s) * out_uncond[..., :k]
    return jnp.concatenate([mixed, out_cond[..., k:]], axis=-1)

  return fn


def conditioned_model_fn(model_fn: ModelFn, cond: Any, uncond: Any, scale, *,
                         guided_channels: int | None = None) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """`model_fn` bound to its conditioning as a function of (x_t, t): guided (one doubled-batch call)
  when both `uncond` and `scale` are given, else the plain conditional model. What samplers and the
  DDIM inversion call each step."""
  if scale is not None and uncond is not None:
    return guided_model_fn(model_fn, cond, uncond, scale, guided_channels=guided_channels)
  check_guidance_scale(scale)
  return lambda x, t: model_fn(x, t, cond)


def clip_x0(x0: jax.Array, bound: float) -> jax.Array:
  """Static thresholding: clamp predicted x0 to [-bound, bound]."""
  return jnp.clip(x0, -bound, bound)


def dynamic_threshold(x0: jax.Array, percentile: float, max_value: float | None = None) -> jax.Array:
  """Imagen's dynamic thresholding: per example, s = max(1, the `percentile` quantile of |x0|);
  clamp to [-s, s] and divide by s, so saturated pixels are pulled in rather than clipped flat.
  `max_value` optionally caps s (diffusers' `sample_max_value`)."""
  flat = jnp.abs(x0.reshape(x0.shape[0], -1))
  s = jnp.quantile(flat, percentile, axis=1)
  s = jnp.maximum(s, 1.0)
  if max_value is not None:
    s = jnp.minimum(s, max_value)
  s = s.reshape((-1,) + (1,) * (x0.ndim - 1))
  return jnp.clip(x0, -s, s) / s


def make_x0_denoiser(clip: float | None = None, dynamic: float | None = None,
                     max_value: float | None = None) -> Callable[[jax.Array], jax.Array] | None:
  """The x0 clamp a sampler applies: dynamic thresholding if `dynamic` (a percentile in (0, 1)) is
  set, else static clipping to ±`clip` if set, else none."""
  if dynamic:
    if not 0.0 < dynamic < 1.0:
      raise ValueError(f"dynamic threshold percentile must lie in (0, 1), got {dynamic}")
    return lambda x0: dynamic_threshold(x0, dynamic, max_value)
  if clip:
    if not (clip > 0 and math.isfinite(clip)):
      raise ValueError(f"x0 clip bound must be a positive finite number, got {clip}")
    return lambda x0: clip_x0(x0, clip)
  return None
