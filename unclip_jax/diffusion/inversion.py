"""DDIM inversion: run the deterministic (eta = 0) DDIM ODE forwards, from an image to its latent x_T.

unCLIP (section 3) inverts an image to x_T so that decoding from that x_T with eta = 0 and the image's
CLIP embedding gives the image back; text diffs and interpolations then vary the embedding while x_T
stays fixed. Like `samplers.sample` this is one `lax.scan` over the (respaced) process's static length.

Index convention: step i (i = 0 .. T'-1) moves x from noise level ᾱ_{i-1} (ᾱ = 1 for i = 0) up to ᾱ_i,
evaluating the network at process index i on the current, less noisy point. That pairs each inversion
step with exactly the network call (timestep) the sampler's step i makes between the same two noise
levels, so the only mismatch is the x the network sees (x_{i-1} for x_i), which vanishes as steps shrink
and is small anyway because x_t keeps unit scale in a variance-preserving process. Evaluating at index
i-1 instead mismatches the noise level, has no timestep for the first step from clean data, and makes
the round-trip error on the Gaussian oracle 1.5-2x larger (tests/diffusion/test_ddim_inversion.py); diffusers'
DDIMInverseScheduler and null-text inversion also evaluate at the index they move to.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from unclip_jax.diffusion import guidance
from unclip_jax.diffusion.gaussian import GaussianDiffusion


def ddim_inversion_step(diffusion: GaussianDiffusion, model_output, x, index):
  """x at process index `index` from x at index-1 (the clean sample for index 0), with eta = 0.

  `model_output` is the network's output at (x, timestep of `index`). Its eps is read at that index (the
  noise level the network was told, so x0- and v-predicting models are read as they were trained, and
  1−ᾱ_index > 0 keeps it finite); x0 is then re-derived from eps at x's own level ᾱ_{index-1}, so the
  first step starts exactly from the data (ᾱ_prev = 1: pred_x0 = x). No clipping: a clamp is not invertible.
  """
  eps = diffusion.p_mean_variance(model_output, x, index)["pred_eps"]
  abar = diffusion._at("alphas_cumprod", index, x)
  abar_prev = diffusion._at("alphas_cumprod_prev", index, x)
  pred_x0 = (x - jnp.sqrt(1.0 - abar_prev) * eps) / jnp.sqrt(abar_prev)
  return jnp.sqrt(abar) * pred_x0 + jnp.sqrt(1.0 - abar) * eps


def ddim_invert(diffusion: GaussianDiffusion, model_fn: Callable[[jax.Array, jax.Array, Any], jax.Array],
                x0: jax.Array, *, cond: Any = None, uncond: Any = None, guidance_scale=None,
                return_trajectory: bool = False):
  """The DDIM latent x_T of `x0`: decoding it with `sample(..., sampler="ddim", eta=0, x_T=...)` and the
  same process, model, conditioning and guidance (and no x0 clamp) reconstructs x0 up to the ODE's
  discretisation error.

  Args:
    diffusion: the (usually respaced) process; its length is the static number of steps.
    model_fn: `model_fn(x_t, t, cond) -> output` with training timesteps `t` (B,).
    x0: clean samples, batch first (B, ...).
    cond, uncond, guidance_scale: as in `samplers.sample` (one doubled-batch call per guided step).
    return_trajectory: also return x after every step, (T', *x0.shape), least noisy first (last = x_T).

  Returns x_T (float32, x0's shape), or (x_T, trajectory) with `return_trajectory`.

  Prefer respacings that stop short of the last training step ("ddimN" rather than "N"): near t = T the
  cosine schedule's ᾱ falls so steeply that inverting through t = T−1 magnifies every model error.
  """
  shape = tuple(x0.shape)
  if len(shape) < 2:
    raise ValueError(f"x0 must have a batch axis and at least one feature axis, got shape {shape}")
  guided = guidance.conditioned_model_fn(model_fn, cond, uncond, guidance_scale,
                                         guided_channels=shape[-1] if diffusion.learns_variance else None)

  def body(x, index):
    batch_index = jnp.full((shape[0],), index, jnp.int32)
    x_next = ddim_inversion_step(diffusion, guided(x, diffusion.model_timesteps(batch_index)), x, batch_index)
    return x_next, (x_next if return_trajectory else None)

  indices = jnp.arange(diffusion.num_timesteps, dtype=jnp.int32)
  x_T, trajectory = jax.lax.scan(body, jnp.asarray(x0, jnp.float32), indices)
  return (x_T, trajectory) if return_trajectory else x_T
