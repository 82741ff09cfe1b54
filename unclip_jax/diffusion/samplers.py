"""Ancestral (DDPM) and DDIM samplers, each one `lax.scan` over a static number of steps.

The number of steps is the length of the (respaced) process, so it is baked into the compiled
program: one compilation per (process, shape), whatever the PRNG key, conditioning or guidance scale.
Randomness is explicit: `key` gives x_T and one key per step, so a key fixes the sample, and
`denoising_step` (the scan body) can be driven by a Python loop for debugging with identical results.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from unclip_jax.diffusion import guidance
from unclip_jax.diffusion.gaussian import GaussianDiffusion

SAMPLERS = ("ddpm", "ddim")

X0Denoiser = Callable[[jax.Array], jax.Array] | None


class Trajectory(NamedTuple):
  """x_{t-1} and the predicted x0 after every step, stacked on a leading (step) axis, noisiest first."""

  x: jax.Array
  pred_x0: jax.Array


def ddpm_step(diffusion: GaussianDiffusion, model_output, x, index, noise, *, denoise_x0: X0Denoiser = None):
  """x_{t-1} ~ p(x_{t-1} | x_t); no noise is added at index 0. Returns (x_prev, pred_x0)."""
  out = diffusion.p_mean_variance(model_output, x, index, denoise_x0=denoise_x0)
  nonzero = (jnp.asarray(index) != 0).astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
  return out["mean"] + nonzero * jnp.exp(0.5 * out["log_variance"]) * noise, out["pred_x0"]


def ddim_step(diffusion: GaussianDiffusion, model_output, x, index, noise, *, eta: float = 0.0,
              denoise_x0: X0Denoiser = None):
  """DDIM's update (Song et al., eq. 12) with σ = eta·sqrt((1−ᾱ')/(1−ᾱ))·sqrt(1−ᾱ/ᾱ').

  eps is recomputed from the (possibly clipped) x0, as guided-diffusion does, so clipping moves
  the sample consistently. eta = 1 matches the ancestral sampler's fixed-small variance.
  """
  out = diffusion.p_mean_variance(model_output, x, index, denoise_x0=denoise_x0)
  abar = diffusion._at("alphas_cumprod", index, x)
  abar_prev = diffusion._at("alphas_cumprod_prev", index, x)
  sigma = eta * jnp.sqrt((1.0 - abar_prev) / (1.0 - abar)) * jnp.sqrt(1.0 - abar / abar_prev)
  mean = (out["pred_x0"] * jnp.sqrt(abar_prev)
          + jnp.sqrt(jnp.maximum(1.0 - abar_prev - sigma ** 2, 0.0)) * out["pred_eps"])
  nonzero = (jnp.asarray(index) != 0).astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
  return mean + nonzero * sigma * noise, out["pred_x0"]


def denoising_step(diffusion: GaussianDiffusion, model: Callable[[jax.Array, jax.Array], jax.Array],
                   x, index: int | jax.Array, key, *, sampler: str = "ddpm", eta: float = 0.0,
                   denoise_x0: X0Denoiser = None):
  """One reverse step at process index `index` (shared by the batch), with its own PRNG `key`."""
  batch_index = jnp.full((x.shape[0],), index, jnp.int32)
  model_output = model(x, diffusion.model_timesteps(batch_index))
  noise = jax.random.normal(key, x.shape, x.dtype)
  if sampler == "ddim":
    return ddim_step(diffusion, model_output, x, batch_index, noise, eta=eta, denoise_x0=denoise_x0)
  return ddpm_step(diffusion, model_output, x, batch_index, noise, denoise_x0=denoise_x0)


def sampling_keys(key, num_steps: int) -> tuple[jax.Array, jax.Array]:
  """(key for x_T, per-step keys (num_steps, ...) in sampling order, noisiest step first)."""
  init_key, steps_key = jax.random.split(key)
  return init_key, jax.random.split(steps_key, num_steps)


def check_sampler_args(sampler: str, eta: float, shape) -> None:
  if sampler not in SAMPLERS:
    raise ValueError(f"unknown sampler {sampler!r}; choose one of: {', '.join(SAMPLERS)}")
  if not isinstance(eta, jax.core.Tracer) and not (math.isfinite(float(eta)) and float(eta) >= 0):
    raise ValueError(f"DDIM eta must be a finite number >= 0, got {eta}")
  if len(tuple(shape)) < 2:
    raise ValueError(f"sample shape must have a batch axis and at least one feature axis, got {tuple(shape)}")


def sample(diffusion: GaussianDiffusion, model_fn: Callable[[jax.Array, jax.Array, Any], jax.Array],
           shape, key, *, cond: Any = None, uncond: Any = None, guidance_scale=None,
           sampler: str = "ddpm", eta: float = 0.0, clip_x0: float | None = None,
           dynamic_threshold: float | None = None, x_T: jax.Array | None = None,
           return_trajectory: bool = False):
  """Draws samples of `shape` by running the reverse process from index T'-1 down to 0.

  Args:
    diffusion: the (usually respaced) process; its length is the static number of steps.
    model_fn: `model_fn(x_t, t, cond) -> output` with training timesteps `t` (B,).
    cond, uncond: pytrees of batch-first conditioning; with `guidance_scale` set and `uncond` given,
      classifier-free guidance runs both branches in one doubled-batch call per step.
    sampler: "ddpm" (ancestral) or "ddim" (with `eta`).
    clip_x0 / dynamic_threshold: clamp predicted x0 statically to ±clip_x0, or dynamically (Imagen)
      at this percentile; dynamic thresholding wins when both are set.
    x_T: start from this noise instead of drawing it from `key`.
    return_trajectory: also return a `Trajectory` with x and predicted x0 after every step.

  Returns the samples, or (samples, Trajectory) with `return_trajectory`.
  """
  shape = tuple(shape)
  check_sampler_args(sampler, eta, shape)
  denoise_x0 = guidance.make_x0_denoiser(clip_x0, dynamic_threshold)
  guided = guidance.conditioned_model_fn(model_fn, cond, uncond, guidance_scale,
                                         guided_channels=shape[-1] if diffusion.learns_variance else None)

  init_key, step_keys = sampling_keys(key, diffusion.num_timesteps)
  if x_T is None:
    x_T = jax.random.normal(init_key, shape, jnp.float32)
  elif tuple(x_T.shape) != shape:
    raise ValueError(f"x_T shape {tuple(x_T.shape)} does not match the sample shape {shape}")
  indices = jnp.arange(diffusion.num_timesteps - 1, -1, -1, dtype=jnp.int32)

  def body(x, inputs):
    index, step_key = inputs
    x_prev, pred_x0 = denoising_step(diffusion, guided, x, index, step_key, sampler=sampler, eta=eta,
                                     denoise_x0=denoise_x0)
    return x_prev, (Trajectory(x_prev, pred_x0) if return_trajectory else None)

  x0, trajectory = jax.lax.scan(body, x_T.astype(jnp.float32), (indices, step_keys))
  return (x0, trajectory) if return_trajectory else x0
