"""The Bayes-optimal denoiser for Gaussian data: a known answer to check samplers against.

For x0 ~ N(μ, diag(s²)) and x_t = sqrt(ᾱ)·x0 + sqrt(1−ᾱ)·ε everything is Gaussian, so
  E[ε | x_t]  = sqrt(1−ᾱ)·(x_t − sqrt(ᾱ)·μ) / (ᾱ·s² + 1 − ᾱ)
  Var[x0|x_t] = s²·(1−ᾱ) / (ᾱ·s² + 1 − ᾱ)
and the true reverse kernel p(x_{t-1} | x_t) is Gaussian with the posterior mean at E[x0|x_t] and
variance β̃ + coef1²·Var[x0|x_t], exact for any respacing. A correct sampler driven by this model must
reproduce μ and s; the tests and `python -m unclip_jax.bench sampler` both use it.
"""

from __future__ import annotations

import jax.numpy as jnp

from unclip_jax.diffusion.gaussian import GaussianDiffusion


def gaussian_optimal_model(process: GaussianDiffusion, mean, std):
  """`model_fn(x, t, cond)` predicting optimally for data N(mean, diag(std²)) (features on the last axis).

  It answers in `process`'s parameterisation (eps, x0 or v) and, for learned variances, also outputs
  the exact reverse variance. `t` must be one of the process's training timesteps (`timestep_map`).
  """
  mu, s = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
  kept = jnp.asarray(process.timestep_map)
  abar_table = jnp.asarray(process.alphas_cumprod, jnp.float32)
  abar_prev_table = jnp.asarray(process.alphas_cumprod_prev, jnp.float32)
  log_var_min_table = jnp.asarray(process.posterior_log_variance_clipped, jnp.float32)

  def model_fn(x, t, cond=None):
    del cond
    shape = (-1,) + (1,) * (x.ndim - 1)
    i = jnp.searchsorted(kept, t)
    a = abar_table[i].reshape(shape)
    eps = jnp.sqrt(1 - a) * (x - jnp.sqrt(a) * mu) / (a * s ** 2 + 1 - a)
    x0 = (x - jnp.sqrt(1 - a) * eps) / jnp.sqrt(a)
    mean_out = {"eps": eps, "x0": x0, "v": jnp.sqrt(a) * eps - jnp.sqrt(1 - a) * x0}[process.prediction]
    if not process.learns_variance:
      return mean_out
    a_prev = abar_prev_table[i].reshape(shape)
    beta = 1 - a / a_prev
    var_x0 = s ** 2 * (1 - a) / (a * s ** 2 + 1 - a)
    true_var = beta * (1 - a_prev) / (1 - a) + (beta * jnp.sqrt(a_prev) / (1 - a)) ** 2 * var_x0
    if process.variance == "learned":
      return jnp.concatenate([mean_out, jnp.broadcast_to(jnp.log(true_var), x.shape)], -1)
    lo, hi = log_var_min_table[i].reshape(shape), jnp.log(beta)
    v = 2 * (jnp.log(true_var) - lo) / (hi - lo) - 1
    return jnp.concatenate([mean_out, jnp.broadcast_to(v, x.shape)], -1)

  return model_fn
