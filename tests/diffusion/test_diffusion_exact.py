"""Known-answer tests: for Gaussian data the optimal denoiser is known in closed form
(`unclip_jax.diffusion.oracle`), so a correct sampler driven by it must reproduce the data's mean and
standard deviation. Stated tolerances, on N = 8192 samples:
  * mean: within 4 standard errors (4·s/√N) of μ;
  * std: within 3% for 1000-step DDPM and DDIM, and for 50-step DDPM with the exact variance given
    through the learned-variance output; within 6% for 50-step DDIM, whose first-order ODE steps
    shrink the spread by ~4% at s = 0.3 (a property of DDIM, measured, not a tolerance for bugs).
"""

import jax
import numpy as np
import pytest

from unclip_jax.diffusion import GaussianDiffusion, get_betas, sample
from unclip_jax.diffusion.oracle import gaussian_optimal_model

MU = np.array([0.5, -0.3, 0.0], np.float32)
S = np.array([0.3, 0.6, 1.0], np.float32)
N = 8192


def optimal_model(process: GaussianDiffusion):
  return gaussian_optimal_model(process, MU, S)


CASES = [
    # (respacing, prediction, variance, sampler, std tolerance)
    (None, "eps", "fixed_small", "ddpm", 0.03),
    (None, "eps", "fixed_small", "ddim", 0.03),
    (None, "x0", "fixed_small", "ddpm", 0.03),
    (None, "v", "fixed_small", "ddim", 0.03),
    ("50", "eps", "learned_range", "ddpm", 0.03),
    ("50", "x0", "learned", "ddpm", 0.03),
    ("50", "eps", "fixed_small", "ddim", 0.06),
    ("ddim50", "v", "fixed_small", "ddim", 0.06),
]


@pytest.mark.parametrize("spacing,prediction,variance,sampler,std_tol", CASES)
def test_sampler_reproduces_gaussian_data(spacing, prediction, variance, sampler, std_tol):
  process = GaussianDiffusion.from_betas(get_betas("cosine", 1000), prediction=prediction, variance=variance)
  if spacing is not None:
    process = process.respace(spacing)
  draw = jax.jit(lambda key: sample(process, optimal_model(process), (N, 3), key, sampler=sampler))
  x = np.asarray(draw(jax.random.key(0)))
  assert np.all(np.isfinite(x))
  np.testing.assert_array_less(np.abs(x.mean(0) - MU), 4 * S / np.sqrt(N))
  np.testing.assert_array_less(np.abs(x.std(0) / S - 1), std_tol)


def test_fixed_small_variance_underestimates_spread_when_respaced():
  """Why the exact-variance case above matters: with β̃ instead of the true variance, 50 ancestral
  steps visibly shrink the samples (the reason improved DDPM learns the variance)."""
  process = GaussianDiffusion.from_betas(get_betas("cosine", 1000)).respace("50")
  x = np.asarray(jax.jit(lambda k: sample(process, optimal_model(process), (N, 3), k))(jax.random.key(1)))
  assert x.std(0)[0] / S[0] < 0.93
