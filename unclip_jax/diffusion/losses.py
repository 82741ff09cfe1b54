"""Training losses: L_simple (MSE on the network's target) and the hybrid L_simple + L_vlb.

The variational term follows improved DDPM / guided-diffusion exactly: KL(q(x_{t-1}|x_t,x_0) ||
p(x_{t-1}|x_t)) in bits per dimension for t > 0, the discretised Gaussian negative log-likelihood of the
data for t = 0, and a stop-gradient on the predicted mean so this term trains only the variance. It is
weighted by T/1000 (guided-diffusion's RESCALED_MSE: weight 1 at T=1000, i.e. λ=0.001 on the full
L_vlb). DALLE2-pytorch weighted it 1000× less, and its users saw NaNs in this term; everything here
runs in float32 whatever the network's compute dtype.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from unclip_jax.diffusion.gaussian import GaussianDiffusion, mean_flat

LOSSES = ("mse", "hybrid")


def normal_kl(mean1, logvar1, mean2, logvar2):
  """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise, in nats."""
  return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                + jnp.square(mean1 - mean2) * jnp.exp(-logvar2))


def approx_standard_normal_cdf(x):
  """The tanh approximation of the standard normal CDF that guided-diffusion's likelihoods use."""
  return 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x, *, means, log_scales):
  """Log-likelihood of data `x` in [-1, 1], quantised to 256 levels, under N(means, exp(log_scales)²).

  The edge bins extend to ±infinity, so the likelihood of an 8-bit image is a proper probability.
  """
  centered = x - means
  inv_stdv = jnp.exp(-log_scales)
  cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
  cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
  log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
  log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
  log_cdf_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
  return jnp.where(x < -0.999, log_cdf_plus, jnp.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


def vb_terms_bpd(diffusion: GaussianDiffusion, model_output, x0, x_t, index):
  """Per-example L_vlb term (bits/dim) for `index`: the KL for t > 0, the decoder NLL for t = 0."""
  true_mean, _, true_log_var = diffusion.q_posterior_mean_variance(x0, x_t, index)
  out = diffusion.p_mean_variance(model_output, x_t, index)
  kl = mean_flat(normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"])) / math.log(2.0)
  nll = -discretized_gaussian_log_likelihood(x0, means=out["mean"], log_scales=0.5 * out["log_variance"])
  nll = mean_flat(nll) / math.log(2.0)
  return jnp.where(jnp.asarray(index) == 0, nll, kl)


def mse_target(diffusion: GaussianDiffusion, x0, index, noise):
  """What the network regresses: the noise, the clean sample or v."""
  if diffusion.prediction == "eps":
    return noise
  if diffusion.prediction == "x0":
    return x0
  return diffusion.v_target(x0, index, noise)


def training_losses(diffusion: GaussianDiffusion, model_fn: Callable[[jax.Array, jax.Array], jax.Array],
                    x0, index, noise, *, loss: str = "mse") -> dict[str, jax.Array]:
  """Per-example losses for one batch: {"loss", "mse"} and, for the hybrid loss, "vb".

  `model_fn(x_t, t)` returns the network output for noised inputs and training timesteps `t`;
  `index` are the sampled timesteps (B,), `noise` the standard-normal noise used to form x_t.
  """
  if loss not in LOSSES:
    raise ValueError(f"unknown diffusion loss {loss!r}; choose one of: {', '.join(LOSSES)}")
  if not diffusion.is_training_process:
    raise ValueError("training losses need the T-step training process, not a respaced one")
  if loss == "mse" and diffusion.learns_variance:
    raise ValueError(f"a {diffusion.variance} model needs loss='hybrid' to train its variance")
  x0 = x0.astype(jnp.float32)
  noise = noise.astype(jnp.float32)
  x_t = diffusion.q_sample(x0, index, noise)
  model_output = model_fn(x_t, diffusion.model_timesteps(index)).astype(jnp.float32)
  mean_output, variance_output = diffusion.split_output(model_output, x_t)
  target = mse_target(diffusion, x0, index, noise)
  terms = {"mse": mean_flat(jnp.square(target - mean_output))}
  if loss == "hybrid":
    # The VB term must not move the mean: only the variance half carries its gradient.
    frozen = jnp.concatenate([jax.lax.stop_gradient(mean_output), variance_output], axis=-1)
    terms["vb"] = vb_terms_bpd(diffusion, frozen, x0, x_t, index) * (diffusion.num_timesteps / 1000.0)
    terms["loss"] = terms["mse"] + terms["vb"]
  else:
    terms["loss"] = terms["mse"]
  return terms
