"""The unCLIP diffusion prior: a causal transformer that predicts a CLIP image embedding (x0).

Layout-compatible with diffusers' `PriorTransformer` (Karlo), so Karlo weights convert by renaming only.
The token sequence is, in diffusers' order,

    [text tokens (projected) × N, text embedding, timestep embedding, noised image embedding, prd query]

with a learned positional embedding over all N + 4 positions, a causal mask plus the text padding
mask (additive -10000, as diffusers), and the prediction read from the final (prd) token after
`norm_out` → `proj_to_clip_embeddings`.

The prior works in a standardised embedding space: Karlo divides CLIP image embeddings by per-dimension
statistics. Those statistics live in their own collection, "stats" (`clip_mean`, `clip_std`), so that
they travel with the checkpoint but are never touched by the optimizer (diffusers keeps them as
parameters). They initialise to mean 0 and std 1 (diffusers' zeros would make `normalize` divide by 0);
a data pipeline fills them from the training embeddings, the Karlo converter from `clip_mean`/`clip_std`.
Unlike diffusers, which drops the causal mask entirely when no text mask is given, this module always
applies it; `attention_mask=None` means every text token is valid.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from unclip_jax.models.layers import MASK_VALUE, TimestepEmbedding, attend, dense, merge_heads, split_heads
from unclip_jax.models.layers import timestep_embedding

Dtype = Any
STATS = "stats"


class _Heads(nn.Module):
  """The fields of a multi-head layer of width num_heads × head_dim."""
  num_heads: int
  head_dim: int
  dropout: float = 0.0
  dtype: Dtype = jnp.float32


class SelfAttention(_Heads):
  """diffusers `Attention` with bias on q/k/v/out (names to_q, to_k, to_v, to_out_0)."""

  @nn.compact
  def __call__(self, x, bias, deterministic: bool = True):
    inner = self.num_heads * self.head_dim
    q = split_heads(dense(inner, "to_q", self.dtype)(x), self.head_dim)
    k = split_heads(dense(inner, "to_k", self.dtype)(x), self.head_dim)
    v = split_heads(dense(inner, "to_v", self.dtype)(x), self.head_dim)
    out = dense(x.shape[-1], "to_out_0", self.dtype)(merge_heads(attend(q, k, v, bias)))
    return nn.Dropout(self.dropout)(out, deterministic=deterministic)


class FeedForward(nn.Module):
  """diffusers `FeedForward(activation_fn="gelu")`: Linear(4d) → exact GELU → Linear(d) (net_0/proj, net_2)."""
  dim: int
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    h = _GeluProj(4 * self.dim, self.dtype, name="net_0")(x)
    h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
    return dense(self.dim, "net_2", self.dtype)(h)  # diffusers: final_dropout=False


class _GeluProj(nn.Module):
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    return nn.gelu(dense(self.features, "proj", self.dtype)(x), approximate=False)


class TransformerBlock(_Heads):
  """Pre-LayerNorm block: x + attn(norm1(x)); x + ff(norm3(x)) (diffusers `BasicTransformerBlock`)."""

  @nn.compact
  def __call__(self, x, bias, deterministic: bool = True):
    dim = self.num_heads * self.head_dim
    h = nn.LayerNorm(epsilon=1e-5, dtype=jnp.float32, name="norm1")(x)
    x = x + SelfAttention(self.num_heads, self.head_dim, self.dropout, self.dtype, name="attn1")(
        h, bias, deterministic).astype(x.dtype)
    h = nn.LayerNorm(epsilon=1e-5, dtype=jnp.float32, name="norm3")(x)
    return x + FeedForward(dim, self.dropout, self.dtype, name="ff")(h, deterministic).astype(x.dtype)


class PriorTransformer(nn.Module):
  """Karlo's diffusion prior (diffusers `PriorTransformer` with its default Karlo options).

  Attributes mirror diffusers' config: width = num_attention_heads × attention_head_dim; `embedding_dim`
  is the CLIP embedding size (768 for ViT-L/14); `num_embeddings` the text length (77).
  """
  num_attention_heads: int = 32
  attention_head_dim: int = 64
  num_layers: int = 20
  embedding_dim: int = 768
  num_embeddings: int = 77
  additional_embeddings: int = 4
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  remat: bool = False

  def setup(self):
    d, cdt = self.embedding_dim, self.dtype
    inner = self.num_attention_heads * self.attention_head_dim
    total = self.num_embeddings + self.additional_embeddings
    self.clip_mean = self.variable(STATS, "clip_mean", lambda: jnp.zeros((d,), jnp.float32))
    self.clip_std = self.variable(STATS, "clip_std", lambda: jnp.ones((d,), jnp.float32))
    self.time_embedding = TimestepEmbedding(inner, inner, cdt)
    self.embedding_proj = dense(inner, dtype=cdt)
    self.encoder_hidden_states_proj = dense(inner, dtype=cdt)
    self.proj_in = dense(inner, dtype=cdt)
    self.positional_embedding = self.param("positional_embedding", nn.initializers.normal(0.02),
                                           (1, total, inner), jnp.float32)
    self.prd_embedding = self.param("prd_embedding", nn.initializers.normal(0.02), (1, 1, inner), jnp.float32)
    block_cls = nn.remat(TransformerBlock, static_argnums=(3,)) if self.remat else TransformerBlock
    self.transformer_blocks = [
        block_cls(self.num_attention_heads, self.attention_head_dim, self.dropout, cdt)
        for _ in range(self.num_layers)]
    self.norm_out = nn.LayerNorm(epsilon=1e-5, dtype=jnp.float32)
    self.proj_to_clip_embeddings = dense(d, dtype=cdt)

  def __call__(self, hidden_states: jax.Array, timestep: jax.Array, proj_embedding: jax.Array,
               encoder_hidden_states: jax.Array, attention_mask: jax.Array | None = None,
               deterministic: bool = True) -> jax.Array:
    """Predicts the (standardised) image embedding x0.

    Args:
      hidden_states: [B, D] noised, standardised image embedding x_t.
      timestep: [B] or scalar diffusion step.
      proj_embedding: [B, D] CLIP text embedding.
      encoder_hidden_states: [B, N, D] CLIP text token states (final layer, pre-projection).
      attention_mask: [B, N] bool/int, 1 where a text token is real; None = all real.
      deterministic: disables dropout.
    Returns:
      [B, D] float32.
    """
    b, n = hidden_states.shape[0], encoder_hidden_states.shape[1]
    inner = self.num_attention_heads * self.attention_head_dim
    total = self.num_embeddings + self.additional_embeddings
    if n != self.num_embeddings:
      raise ValueError(f"prior expects {self.num_embeddings} text tokens, got {n}")
    cdt, f32 = self.dtype, jnp.float32
    t = jnp.broadcast_to(jnp.asarray(timestep), (b,))
    time_emb = self.time_embedding(timestep_embedding(t, inner))
    proj = self.embedding_proj(proj_embedding.astype(cdt))
    text = self.encoder_hidden_states_proj(encoder_hidden_states.astype(cdt))
    x_in = self.proj_in(hidden_states.astype(cdt))
    x = jnp.concatenate([text.astype(f32), proj[:, None].astype(f32), time_emb[:, None].astype(f32),
                         x_in[:, None].astype(f32), jnp.broadcast_to(self.prd_embedding, (b, 1, inner))], axis=1)
    x = x + self.positional_embedding

    if attention_mask is None:
      attention_mask = jnp.ones((b, n), jnp.bool_)
    pad = (1.0 - attention_mask.astype(f32)) * MASK_VALUE
    pad = jnp.pad(pad, ((0, 0), (0, self.additional_embeddings)))
    causal = jnp.triu(jnp.full((total, total), MASK_VALUE, f32), k=1)
    bias = (pad[:, None, :] + causal[None])[:, None]  # [B, 1, L, L], shared by all heads

    for block in self.transformer_blocks:
      x = block(x, bias, deterministic)
    x = self.norm_out(x)
    return self.proj_to_clip_embeddings(x[:, -1]).astype(f32)

  def post_process_latents(self, latents: jax.Array) -> jax.Array:
    """Standardised → CLIP space (diffusers `post_process_latents`)."""
    return latents * self.clip_std.value + self.clip_mean.value

  def normalize(self, embeddings: jax.Array) -> jax.Array:
    """CLIP space → standardised, the space the prior is trained in."""
    return (embeddings - self.clip_mean.value) / self.clip_std.value


def post_process_latents(stats: dict, latents: jax.Array) -> jax.Array:
  """Pure form of `PriorTransformer.post_process_latents` on the "stats" collection."""
  return latents * stats["clip_std"] + stats["clip_mean"]


def normalize_embeddings(stats: dict, embeddings: jax.Array) -> jax.Array:
  """Pure form of `PriorTransformer.normalize` on the "stats" collection."""
  return (embeddings - stats["clip_mean"]) / stats["clip_std"]


def from_config(m) -> PriorTransformer:
  """Builds the module from a `configs/prior.py` model sub-config (`config.model`) or a stage.json dict."""
  def get(key, default):
    return m[key] if key in m else default
  return PriorTransformer(num_attention_heads=m["num_attention_heads"], attention_head_dim=m["attention_head_dim"],
                          num_layers=m["num_layers"], embedding_dim=m["embedding_dim"],
                          num_embeddings=m["num_embeddings"], additional_embeddings=get("additional_embeddings", 4),
                          dropout=get("dropout", 0.0), dtype=jnp.dtype(get("dtype", "float32")),
                          remat=get("remat", False))


def init_variables(model: PriorTransformer, rng: jax.Array, batch: int = 1) -> dict:
  """Initialises {"params", "stats"} with dummy inputs of the right shapes."""
  d, n = model.embedding_dim, model.num_embeddings
  z = jnp.zeros((batch, d), jnp.float32)
  return model.init(rng, z, jnp.zeros((batch,), jnp.int32), z, jnp.zeros((batch, n, d), jnp.float32))
