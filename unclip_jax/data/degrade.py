"""Noise-conditioning augmentation of the low-resolution image the upsamplers are conditioned on.

unCLIP (§2.1, after Nichol et al. / Saharia et al.) corrupts the conditioning image during upsampler training
so that, at sampling time, the upsampler tolerates the artefacts of the stage below it:
  * 64→256: Gaussian blur, kernel 3, σ 0.6 (`gaussian_blur_augment`; `sigma_range` draws σ per image).
  * 256→1024: a "BSR"-style degradation (`bsr_degrade`), a simplified version of BSRGAN's pipeline:
      1. isotropic Gaussian blur, σ ~ U(blur_sigma_range), kernel `blur_kernel`;
      2. resize down by a factor drawn from `down_factors` with a randomly chosen interpolation
         (nearest / bilinear / bicubic / Lanczos-3), then back up to the input size (bicubic);
      3. additive Gaussian noise, std ~ U(noise_std_range) (in [-1, 1] units);
      4. optional JPEG-like compression (`jpeg_prob` > 0): 8×8 block DCT of each channel, coefficients
         quantised with the standard JPEG luminance table scaled by a quality ~ U(jpeg_quality_range)
         (no chroma subsampling, no entropy coding; only the quantisation is what matters here);
      5. clip to [-1, 1].
    BSRGAN's anisotropic kernels, camera-sensor noise and random order of steps are not implemented.

All functions are pure, jittable, take NHWC float images in [-1, 1] and an explicit PRNG key, and draw
independent parameters per image (deterministic for a given key). Output shape = input shape.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

INTERPOLATIONS = ("nearest", "linear", "cubic", "lanczos3")

# JPEG Annex K luminance quantisation table (quality 50).
_JPEG_Q50 = np.array([
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55], [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62], [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]], np.float32)


def gaussian_kernel1d(sigma: jax.Array, size: int) -> jax.Array:
  """Normalised 1-D Gaussian taps; `sigma` may be traced, `size` (odd) is static."""
  r = jnp.arange(size, dtype=jnp.float32) - (size - 1) / 2
  sigma = jnp.maximum(jnp.asarray(sigma, jnp.float32), 1e-3)
  k = jnp.exp(-0.5 * (r / sigma) ** 2)
  return k / k.sum()


def _blur_one(image: jax.Array, sigma: jax.Array, size: int) -> jax.Array:
  """Separable blur of one HWC image with reflect padding (no darkening at the borders)."""
  k = gaussian_kernel1d(sigma, size)
  p = size // 2
  x = jnp.pad(image, ((p, p), (p, p), (0, 0)), mode="reflect")
  h, w = image.shape[:2]
  x = sum(k[i] * x[i:i + h] for i in range(size))
  return sum(k[i] * x[:, i:i + w] for i in range(size))


def gaussian_blur(images: jax.Array, sigma, kernel_size: int = 3) -> jax.Array:
  """Blurs NHWC `images` with σ = `sigma` (scalar or one per image)."""
  sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), images.shape[:1])
  return jax.vmap(lambda im, s: _blur_one(im, s, kernel_size))(images.astype(jnp.float32), sigma)


def gaussian_blur_augment(key: jax.Array, images: jax.Array, *, sigma: float = 0.6,
                          sigma_range: Sequence[float] | None = None, kernel_size: int = 3) -> jax.Array:
  """The 64→256 corruption: blur with σ = `sigma` (paper: 0.6, kernel 3), or σ ~ U(sigma_range) per image."""
  if sigma_range is None:
    sig = jnp.full(images.shape[:1], sigma, jnp.float32)
  else:
    lo, hi = sigma_range
    sig = jax.random.uniform(key, images.shape[:1], minval=lo, maxval=hi)
  return jnp.clip(gaussian_blur(images, sig, kernel_size), -1.0, 1.0)


def _resize_random(key: jax.Array, image: jax.Array, factors: Sequence[int]) -> jax.Array:
  """Down by a random factor of `factors` with a random interpolation, back up bicubically."""
  h, w, c = image.shape
  kf, km = jax.random.split(key)

  def branch(f, method):
    def go(x):
      small = jax.image.resize(x, (max(h // f, 1), max(w // f, 1), c), method=method, antialias=True)
      return jax.image.resize(small, (h, w, c), method="cubic")
    return go

  branches = [branch(f, m) for f in factors for m in INTERPOLATIONS]
  index = (jax.random.randint(kf, (), 0, len(factors)) * len(INTERPOLATIONS)
           + jax.random.randint(km, (), 0, len(INTERPOLATIONS)))
  return jax.lax.switch(index, branches, image)


def _dct_matrix(n: int = 8) -> np.ndarray:
  k, i = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
  m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
  m[0] /= np.sqrt(2.0)
  return m.astype(np.float32)  # orthonormal DCT-II


def jpeg_like(image: jax.Array, quality: jax.Array) -> jax.Array:
  """Block-DCT quantisation of one HWC image in [-1, 1] at JPEG `quality` (1..100, may be traced).

  H and W are padded (edge) up to multiples of 8 and cropped back.
  """
  h, w, c = image.shape
  ph, pw = (-h) % 8, (-w) % 8
  x = jnp.pad((image + 1.0) * 127.5 - 128.0, ((0, ph), (0, pw), (0, 0)), mode="edge")
  hh, ww = x.shape[:2]
  blocks = x.reshape(hh // 8, 8, ww // 8, 8, c).transpose(0, 2, 4, 1, 3)  # [bh, bw, c, 8, 8]
  d = jnp.asarray(_dct_matrix())
  coef = d @ blocks @ d.T
  q = jnp.clip(quality, 1.0, 100.0)
  scale = jnp.where(q < 50, 5000.0 / q, 200.0 - 2.0 * q) / 100.0
  table = jnp.clip(jnp.floor(jnp.asarray(_JPEG_Q50) * scale + 0.5), 1.0, 255.0)
  coef = jnp.round(coef / table) * table
  out = (d.T @ coef @ d).transpose(0, 3, 1, 4, 2).reshape(hh, ww, c)
  return ((out + 128.0) / 127.5 - 1.0)[:h, :w]


def bsr_degrade(key: jax.Array, images: jax.Array, *, blur_sigma_range: Sequence[float] = (0.2, 2.0),
                blur_kernel: int = 7, down_factors: Sequence[int] = (1, 2, 4),
                noise_std_range: Sequence[float] = (0.0, 0.08), jpeg_prob: float = 0.0,
                jpeg_quality_range: Sequence[float] = (30.0, 95.0)) -> jax.Array:
  """The 256→1024 corruption (see module docstring); one independent draw per image."""
  images = images.astype(jnp.float32)
  keys = jax.random.split(key, images.shape[0])
  factors = tuple(int(f) for f in down_factors)

  def one(k, im):
    kb, kr, kn, kns, kj, kq = jax.random.split(k, 6)
    sigma = jax.random.uniform(kb, (), minval=blur_sigma_range[0], maxval=blur_sigma_range[1])
    x = _blur_one(im, sigma, blur_kernel)
    x = _resize_random(kr, x, factors)
    std = jax.random.uniform(kns, (), minval=noise_std_range[0], maxval=noise_std_range[1])
    x = x + std * jax.random.normal(kn, x.shape)
    if jpeg_prob > 0:
      quality = jax.random.uniform(kq, (), minval=jpeg_quality_range[0], maxval=jpeg_quality_range[1])
      x = jnp.where(jax.random.bernoulli(kj, jpeg_prob), jpeg_like(jnp.clip(x, -1, 1), quality), x)
    return jnp.clip(x, -1.0, 1.0)

  return jax.vmap(one)(keys, images)
