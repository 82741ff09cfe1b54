"""OpenAI-architecture CLIP as pure linen modules: a ViT image tower and a causal text transformer.

The parameter tree mirrors the OpenAI / open_clip state-dict layout (`visual/conv1`, `visual/transformer/
resblocks_N/attn/in_proj`, `token_embedding`, `ln_final`, `text_projection`, `logit_scale`, ...) so that
`unclip_jax.convert.clip` is a rename plus transposes, and released weights reproduce open_clip's
embeddings. The text tower also returns its per-token states after `ln_final`, which the unCLIP prior
and decoder consume. Images enter as NHWC float arrays already normalised with the config's
`image_mean`/`image_std` (see `normalize_images`), so the model itself is a pure function of pixels.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from unclip_jax.errors import UserError

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
LN_EPS = 1e-5  # torch's LayerNorm default; flax's 1e-6 would break parity with released weights
ACTIVATIONS = ("quick_gelu", "gelu")


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
  """Everything needed to rebuild a CLIP; stored as `stage.json["config"]` in checkpoints."""

  embed_dim: int = 512
  # image tower
  image_size: int = 224
  patch_size: int = 32
  vision_width: int = 768
  vision_layers: int = 12
  vision_heads: int = 12
  # text tower
  context_length: int = 77
  vocab_size: int = 49408
  text_width: int = 512
  text_heads: int = 8
  text_layers: int = 12
  mlp_ratio: float = 4.0
  # OpenAI's released weights use QuickGELU; open_clip's own trainings use exact GELU.
  activation: str = "quick_gelu"
  init_logit_scale: float = math.log(1 / 0.07)
  init_logit_bias: float | None = None  # set (e.g. -10.0) to add the learnable SigLIP bias
  image_mean: tuple[float, float, float] = OPENAI_MEAN
  image_std: tuple[float, float, float] = OPENAI_STD
  dtype: str = "float32"  # compute dtype; parameters stay float32
  # False for a text-only CLIP (Karlo's released text_encoder/): no `visual` parameters, no image inputs.
  image_tower: bool = True

  def __post_init__(self):
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
    if self.image_size % self.patch_size:
      raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
    for width, heads, name in ((self.vision_width, self.vision_heads, "vision"),
                               (self.text_width, self.text_heads, "text")):
      if width % heads:
        raise ValueError(f"{name}_width {width} is not divisible by {name}_heads {heads}")

  @property
  def grid_size(self) -> int:
    return self.image_size // self.patch_size

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["image_mean"], d["image_std"] = list(self.image_mean), list(self.image_std)
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> CLIPConfig:
    """Builds a config from a (JSON) dict; unknown keys are an error so typos cannot pass silently."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f"unknown CLIP config field(s): {', '.join(unknown)}")
    d = dict(d)
    for k in ("image_mean", "image_std"):
      if k in d:
        d[k] = tuple(float(v) for v in d[k])
    return cls(**d)

  def replace(self, **kw) -> CLIPConfig:
    return dataclasses.replace(self, **kw)


# Presets. Parameter counts (tests/models/test_clip_model.py): ViT-B/32 151,277,313; ViT-L/14 427,616,513.
PRESETS: dict[str, CLIPConfig] = {
    "tiny": CLIPConfig(embed_dim=32, image_size=32, patch_size=8, vision_width=32, vision_layers=2,
                       vision_heads=2, context_length=16, text_width=32, text_heads=2, text_layers=2,
                       activation="gelu", image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5)),
    "ViT-B/32": CLIPConfig(),
    "ViT-B/16": CLIPConfig(patch_size=16),
    "ViT-L/14": CLIPConfig(embed_dim=768, patch_size=14, vision_width=1024, vision_layers=24, vision_heads=16,
                           text_width=768, text_heads=12, text_layers=12),
}


def get_preset(name: str) -> CLIPConfig:
  """Preset by name; accepts open_clip spellings too ('ViT-B-32', 'vit_b32')."""
  def key(n):
    return "".join(ch for ch in n.lower() if ch.isalnum())

  for preset, config in PRESETS.items():
    if key(preset) == key(name):
      return config
  raise KeyError(f"unknown CLIP preset {name!r}; choose one of {', '.join(PRESETS)}")


def _activation(name: str):
  if name == "quick_gelu":
    return lambda x: x * jax.nn.sigmoid(1.702 * x)
  return lambda x: jax.nn.gelu(x, approximate=False)


class Attention(nn.Module):
  """Multi-head self-attention with torch's fused `in_proj` layout (q, k, v stacked on the output axis)."""

  width: int
  heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    b, n, _ = x.shape
    head_dim = self.width // self.heads
    qkv = nn.Dense(3 * self.width, dtype=self.dtype, name="in_proj")(x)
    q, k, v = jnp.split(qkv.reshape(b, n, 3, self.heads, head_dim), 3, axis=2)
    q, k, v = (t[:, :, 0] for t in (q, k, v))  # (b, n, heads, head_dim)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / math.sqrt(head_dim)
    if mask is not None:
      logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, n, self.width)
    return nn.Dense(self.width, dtype=self.dtype, name="out_proj")(out)


class _BlockShape(nn.Module):
  """The fields of a transformer block: width, heads, MLP ratio, activation, compute dtype."""
  width: int
  heads: int
  mlp_ratio: float
  activation: str
  dtype: Any = jnp.float32


class ResidualBlock(_BlockShape):
  """Pre-LN transformer block (OpenAI's `ResidualAttentionBlock`)."""

  @nn.compact
  def __call__(self, x, mask=None):
    h = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="ln_1")(x)
    x = x + Attention(self.width, self.heads, dtype=self.dtype, name="attn")(h, mask)
    h = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="ln_2")(x)
    h = nn.Dense(int(self.width * self.mlp_ratio), dtype=self.dtype, name="c_fc")(h)
    h = _activation(self.activation)(h)
    return x + nn.Dense(self.width, dtype=self.dtype, name="c_proj")(h)


class Transformer(_BlockShape):
  """`layers` residual blocks of the same shape (resblocks_0 ... resblocks_{layers-1})."""
  layers: int = 1

  @nn.compact
  def __call__(self, x, mask=None):
    for i in range(self.layers):
      x = ResidualBlock(self.width, self.heads, self.mlp_ratio, self.activation, dtype=self.dtype,
                        name=f"resblocks_{i}")(x, mask)
    return x


class VisionTransformer(nn.Module):
  """ViT image tower: patches + class token + learned positions, ln_pre, blocks, ln_post on the class token."""

  config: CLIPConfig

  @nn.compact
  def __call__(self, images):
    c = self.config
    dtype = jnp.dtype(c.dtype)
    scale = c.vision_width ** -0.5
    x = nn.Conv(c.vision_width, (c.patch_size, c.patch_size), strides=(c.patch_size, c.patch_size),
                padding="VALID", use_bias=False, dtype=dtype, name="conv1")(images.astype(dtype))
    b = x.shape[0]
    x = x.reshape(b, -1, c.vision_width)
    cls = self.param("class_embedding", nn.initializers.normal(scale), (c.vision_width,))
    pos = self.param("positional_embedding", nn.initializers.normal(scale), (c.grid_size ** 2 + 1, c.vision_width))
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(dtype), (b, 1, c.vision_width)), x], axis=1)
    x = x + pos.astype(dtype)
    x = nn.LayerNorm(epsilon=LN_EPS, dtype=dtype, name="ln_pre")(x)
    x = Transformer(c.vision_width, c.vision_heads, c.mlp_ratio, c.activation, dtype=dtype, layers=c.vision_layers,
                    name="transformer")(x)
    pooled = nn.LayerNorm(epsilon=LN_EPS, dtype=dtype, name="ln_post")(x[:, 0])
    proj = self.param("proj", nn.initializers.normal(scale), (c.vision_width, c.embed_dim))
    return (pooled @ proj.astype(dtype)).astype(jnp.float32)


class CLIP(nn.Module):
  """Two towers and the learnable log-temperature (plus an optional SigLIP bias).

  `__call__(images, tokens)` returns a dict of unnormalised `image_embeds` (absent for a text-only CLIP,
  `config.image_tower` false), `text_embeds`, the per-token
  `text_states` (B, context, text_width) after `ln_final`, `logit_scale` and, if configured, `logit_bias`.
  """

  config: CLIPConfig

  def setup(self):
    c = self.config
    dtype = jnp.dtype(c.dtype)
    if c.image_tower:
      self.visual = VisionTransformer(c)
    self.token_embedding = nn.Embed(c.vocab_size, c.text_width, embedding_init=nn.initializers.normal(0.02),
                                    dtype=dtype)
    self.positional_embedding = self.param("positional_embedding", nn.initializers.normal(0.01),
                                           (c.context_length, c.text_width))
    self.transformer = Transformer(c.text_width, c.text_heads, c.mlp_ratio, c.activation, dtype=dtype,
                                   layers=c.text_layers)
    self.ln_final = nn.LayerNorm(epsilon=LN_EPS, dtype=dtype)
    self.text_projection = self.param("text_projection", nn.initializers.normal(c.text_width ** -0.5),
                                      (c.text_width, c.embed_dim))
    self.logit_scale = self.param("logit_scale", nn.initializers.constant(c.init_logit_scale), ())
    if c.init_logit_bias is not None:
      self.logit_bias = self.param("logit_bias", nn.initializers.constant(c.init_logit_bias), ())

  def encode_image(self, images):
    """(B, H, W, 3) normalised pixels → (B, embed_dim) unnormalised image embeddings."""
    if not self.config.image_tower:
      raise UserError("this CLIP is a text encoder only (no image tower); images need a CLIP with an image "
                      "encoder, e.g. a Karlo pipeline converted with --variations")
    return self.visual(images)

  def encode_text(self, tokens):
    """(B, L) token ids → ((B, embed_dim) embeddings, (B, L, text_width) per-token states).

    Pooled at the end-of-text token, found as the argmax of the ids (it has the largest id), as OpenAI does.
    """
    c = self.config
    dtype = jnp.dtype(c.dtype)
    n = tokens.shape[-1]
    x = self.token_embedding(tokens) + self.positional_embedding[:n].astype(dtype)
    causal = jnp.tril(jnp.ones((n, n), dtype=bool))
    x = self.transformer(x, causal)
    states = self.ln_final(x)
    pooled = jnp.take_along_axis(states, jnp.argmax(tokens, axis=-1)[:, None, None], axis=1)[:, 0]
    embeds = pooled @ self.text_projection.astype(dtype)
    return embeds.astype(jnp.float32), states.astype(jnp.float32)

  def __call__(self, images, tokens):
    text_embeds, text_states = self.encode_text(tokens)
    out = {"text_embeds": text_embeds, "text_states": text_states, "logit_scale": self.logit_scale}
    if self.config.image_tower:
      out["image_embeds"] = self.encode_image(images)
    if self.config.init_logit_bias is not None:
      out["logit_bias"] = self.logit_bias
    return out


def dummy_inputs(config: CLIPConfig, batch: int = 1):
  """Zero inputs of the right shapes, for `init` and `jax.eval_shape`."""
  return (jnp.zeros((batch, config.image_size, config.image_size, 3), jnp.float32),
          jnp.zeros((batch, config.context_length), jnp.int32))


def init_params(config: CLIPConfig, rng: jax.Array):
  """Random float32 parameters (jitted: one compile is much faster than running init op by op)."""
  return jax.jit(lambda key: CLIP(config).init(key, *dummy_inputs(config))["params"])(rng)


def abstract_params(config: CLIPConfig):
  """Shapes and dtypes of the parameters, computed without allocating them."""
  return jax.eval_shape(lambda: init_params(config, jax.random.key(0)))


def count_params(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def normalize_images(images, config: CLIPConfig, value_range: tuple[float, float] = (0.0, 1.0)):
  """NHWC images → the normalised float32 input of the image tower.

  uint8 images are read as [0, 255]; float images as `value_range` (pass (-1, 1) for the project's
  batch convention), then standardised with the config's per-channel mean and std.
  """
  x = jnp.asarray(images)
  if x.dtype == jnp.uint8:
    x = x.astype(jnp.float32) / 255.0
  else:
    lo, hi = value_range
    x = (x.astype(jnp.float32) - lo) / (hi - lo)
  return (x - jnp.asarray(config.image_mean, jnp.float32)) / jnp.asarray(config.image_std, jnp.float32)


def l2_normalize(x, eps: float = 1e-12):
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)
