"""Upsampler conditioning corruptions: shapes, range, determinism, and that they remove high frequencies."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unclip_jax.data import degrade


def _images(n=2, size=16, seed=0):
  return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)), jnp.float32)


def _high_freq_energy(x):
  """Mean squared discrete Laplacian: large for pixel-level detail, small for smooth images."""
  lap = (4 * x[:, 1:-1, 1:-1] - x[:, :-2, 1:-1] - x[:, 2:, 1:-1] - x[:, 1:-1, :-2] - x[:, 1:-1, 2:])
  return float(jnp.mean(lap ** 2))


def test_gaussian_kernel_matches_closed_form():
  k = np.asarray(degrade.gaussian_kernel1d(0.6, 3))
  e = np.exp(-0.5 / 0.36)
  np.testing.assert_allclose(k, np.array([e, 1, e]) / (1 + 2 * e), rtol=1e-6)


def test_paper_blur_shape_range_and_high_frequencies():
  x = _images()
  y = jax.jit(lambda k, x: degrade.gaussian_blur_augment(k, x))(jax.random.key(0), x)
  assert y.shape == x.shape and y.dtype == jnp.float32
  assert float(y.min()) >= -1 and float(y.max()) <= 1
  assert _high_freq_energy(y) < 0.5 * _high_freq_energy(x)
  const = jnp.full((1, 8, 8, 3), 0.3)  # reflect padding keeps flat images flat, borders included
  np.testing.assert_allclose(degrade.gaussian_blur(const, 0.6), const, atol=1e-6)


def test_random_sigma_blur_is_deterministic_per_key():
  x = _images(n=3)
  f = jax.jit(lambda k: degrade.gaussian_blur_augment(k, x, sigma_range=(0.4, 0.8)))
  a, b, c = f(jax.random.key(1)), f(jax.random.key(1)), f(jax.random.key(2))
  np.testing.assert_array_equal(a, b)
  assert float(jnp.abs(a - c).max()) > 1e-4


@pytest.mark.parametrize("jpeg_prob", [0.0, 1.0])
def test_bsr_degrade(jpeg_prob):
  x = _images(n=2, size=16)
  f = jax.jit(lambda k, x: degrade.bsr_degrade(k, x, jpeg_prob=jpeg_prob, noise_std_range=(0.0, 0.02)))
  a, b, c = f(jax.random.key(3), x), f(jax.random.key(3), x), f(jax.random.key(4), x)
  assert a.shape == x.shape and a.dtype == jnp.float32
  assert float(a.min()) >= -1 and float(a.max()) <= 1
  np.testing.assert_array_equal(a, b)
  assert float(jnp.abs(a - c).max()) > 1e-4
  assert not np.allclose(a[0], a[1])  # each image gets its own corruption
  assert _high_freq_energy(a) < 0.5 * _high_freq_energy(x)


def test_jpeg_like_quality_orders_error():
  rng = np.random.default_rng(5)
  smooth = jnp.asarray(np.cumsum(rng.normal(size=(16, 16, 3)), axis=0) / 10, jnp.float32).clip(-1, 1)
  err = {q: float(jnp.abs(degrade.jpeg_like(smooth, jnp.float32(q)) - smooth).mean()) for q in (10, 95)}
  assert err[95] < err[10]
  assert err[95] < 0.02
