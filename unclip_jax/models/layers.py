"""Pieces the prior and the UNets share: sinusoidal timesteps, the timestep MLP, attention arithmetic.

They follow diffusers' numerics exactly (`get_timestep_embedding(flip_sin_to_cos=True, shift=0)`, additive
-10000 masks, softmax in float32), because the Karlo weights were trained and are converted with them.
Parameters are float32; `dtype` is the compute dtype of matmuls and convolutions.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# diffusers' (and GLIDE's) additive mask value; -inf would differ for fully masked rows.
MASK_VALUE = -10000.0


def timestep_embedding(t: jax.Array, dim: int, *, flip_sin_to_cos: bool = True, freq_shift: float = 0.0,
                       max_period: float = 10000.0) -> jax.Array:
  """Sinusoidal embedding of (possibly fractional) timesteps `t` of shape [B] → [B, dim], float32."""
  half = dim // 2
  exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
  args = jnp.asarray(t, jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
  if flip_sin_to_cos:
    emb = jnp.concatenate([emb[:, half:], emb[:, :half]], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


def dense(features: int, name: str | None = None, dtype: Dtype = jnp.float32, use_bias: bool = True) -> nn.Dense:
  """A float32-parameter Dense computing in `dtype` (torch `nn.Linear` layout after transposing)."""
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32, name=name)


class TimestepEmbedding(nn.Module):
  """diffusers' `TimestepEmbedding`: Linear → SiLU → Linear (names linear_1, linear_2)."""
  hidden_dim: int
  out_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = dense(self.hidden_dim, "linear_1", self.dtype)(x.astype(self.dtype))
    return dense(self.out_dim, "linear_2", self.dtype)(nn.silu(x))


def attend(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array | None = None) -> jax.Array:
  """Multi-head attention on [B, L, H, D] tensors; `bias` broadcasts to [B, H, Lq, Lk].

  Scores and softmax run in float32 whatever the compute dtype (diffusers' `upcast_softmax`): q·k is
  accumulated and returned in float32 from operands in the compute dtype, which equals the product of
  float32 copies (upcasting bfloat16 is exact) without running a float32 matmul (TF32 on a GPU).
  """
  scale = q.shape[-1] ** -0.5
  scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
  if bias is not None:
    scores = scores + bias.astype(jnp.float32)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


def split_heads(x: jax.Array, head_dim: int) -> jax.Array:
  """[B, L, H*D] → [B, L, H, D] (diffusers' head_to_batch_dim order: heads are contiguous chunks)."""
  b, l, c = x.shape
  return x.reshape(b, l, c // head_dim, head_dim)


def merge_heads(x: jax.Array) -> jax.Array:
  b, l, h, d = x.shape
  return x.reshape(b, l, h * d)


def inference_weights(tree, dtype: str | None):
  """A stage's weights as sampling reads them. With a compute dtype narrower than float32, every `kernel`
  (the convolutions' and dense layers' weights, which the layers multiply in the compute dtype anyway) is
  stored in that dtype; norms, biases, embeddings and the prior's statistics stay float32. Cast once here,
  the kernels take half the memory, and no cast is left inside the sampling loops, where XLA's GPU backend
  repeats it every step (the prior's were 42 of its 250 ms in the Karlo pipeline's trace on an H200).
  Every conv and dense layer casts its kernel to the compute dtype, so the products are the same (XLA may
  fuse around them differently: a bf16 rounding's difference at most)."""
  if dtype is None or jnp.dtype(dtype).itemsize >= 4:
    return tree

  narrow = jnp.dtype(dtype)

  def cast(path, x):
    name = getattr(path[-1], "key", getattr(path[-1], "name", None))
    if name == "kernel" and jnp.issubdtype(x.dtype, jnp.floating) and x.dtype.itemsize > narrow.itemsize:
      return jnp.asarray(x, narrow)
    return x
  return jax.tree_util.tree_map_with_path(cast, tree)
