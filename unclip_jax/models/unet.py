"""The ADM/GLIDE-style UNets of unCLIP: the 64px decoder and the super-resolution models.

One `UNet` covers both, in diffusers' layout so Karlo weights convert by renaming:
  * decoder = diffusers `UNet2DConditionModel` as Karlo uses it: `ResnetDownsampleBlock2D` at the first
    level, `SimpleCrossAttnDownBlock2D` at the others, `UNetMidBlock2DSimpleCrossAttn`, mirrored up blocks;
    scale-shift GroupNorm in every residual block, residual (not strided-conv) up/down sampling, and
    GLIDE's "added-KV" attention whose keys/values are the encoder tokens *and* the pixels;
    `class_embed_type="identity"`: an extra embedding (text_proj's CLIP time embedding) is added to the
    timestep embedding. `Decoder` bundles it with `TextProj` (diffusers `UnCLIPTextProjModel`).
  * super-resolution = diffusers `UNet2DModel` with Resnet{Down,Up}sampleBlock2D and no attention; the input
    is the noisy image concatenated with the upsampled low-resolution image (6 channels).

Images are NHWC. Parameters are float32, `dtype` is the compute dtype (GroupNorm statistics and the
attention softmax stay in float32). `remat=True` rematerialises each residual block and attention layer.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from unclip_jax.models.layers import MASK_VALUE, TimestepEmbedding, attend, dense, merge_heads, split_heads
from unclip_jax.models.layers import timestep_embedding

Dtype = Any


def conv(features: int, kernel: int, dtype: Dtype, name: str | None = None) -> nn.Conv:
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), padding=((pad, pad), (pad, pad)), dtype=dtype,
                 param_dtype=jnp.float32, name=name)


class GroupNorm(nn.Module):
  """GroupNorm over every axis but the batch and the channels, in float32, with flax `nn.GroupNorm`'s
  parameters (`scale`, `bias`) and statistics (E[x²] − E[x]², floored at 0).

  The statistics are summed per channel first and only then per group: XLA on CPU reduces over the
  leading axes with the channels kept contiguous much faster than over (positions, channels of a group)
  with the groups kept, which is how `nn.GroupNorm` asks for it. The normalisation, the affine and an
  optional per-example FiLM (`film=(scale, shift)`, each (B, C): h·(1 + scale) + shift) fold into one
  multiply-add per element."""
  num_groups: int = 32
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array, film: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
    b, c, g = x.shape[0], x.shape[-1], self.num_groups
    if c % g:
      raise ValueError(f"GroupNorm: {c} channels do not split into {g} groups")
    gamma = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    beta = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    x = x.astype(jnp.float32)
    axes = tuple(range(1, x.ndim - 1))
    count = math.prod(x.shape[1:-1]) * (c // g)
    mean = jnp.sum(x, axes).reshape(b, g, c // g).sum(-1) / count  # (B, G)
    mean_sq = jnp.sum(x * x, axes).reshape(b, g, c // g).sum(-1) / count
    rstd = jax.lax.rsqrt(jnp.maximum(mean_sq - mean * mean, 0.0) + self.epsilon)
    a = jnp.repeat(rstd, c // g, axis=-1) * gamma  # per (example, channel): y = x·a + d
    d = beta - jnp.repeat(mean, c // g, axis=-1) * a
    if film is not None:
      scale, shift = film
      a, d = a * (1 + scale), d * (1 + scale) + shift
    expand = (slice(None),) + (None,) * len(axes) + (slice(None),)
    return x * a[expand] + d[expand]


def group_norm(groups: int, eps: float, name: str | None = None) -> GroupNorm:
  return GroupNorm(num_groups=groups, epsilon=eps, name=name)


def upsample_nearest(x: jax.Array) -> jax.Array:
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def downsample_avg(x: jax.Array) -> jax.Array:
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


class ResnetBlock(nn.Module):
  """diffusers `ResnetBlock2D`; with `scale_shift`, GroupNorm(h)·(1+scale)+shift from the time embedding."""
  out_channels: int
  scale_shift: bool = True
  up: bool = False
  down: bool = False
  groups: int = 32
  eps: float = 1e-5
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, temb, deterministic: bool = True):
    c = self.out_channels
    h = nn.silu(group_norm(self.groups, self.eps, "norm1")(x)).astype(self.dtype)
    if self.up:
      x, h = upsample_nearest(x), upsample_nearest(h)
    elif self.down:
      x, h = downsample_avg(x), downsample_avg(h)
    h = conv(c, 3, self.dtype, "conv1")(h)
    emb = dense(2 * c if self.scale_shift else c, "time_emb_proj", self.dtype)(nn.silu(temb).astype(self.dtype))
    if self.scale_shift:
      scale, shift = jnp.split(emb.astype(jnp.float32), 2, axis=-1)
      h = group_norm(self.groups, self.eps, "norm2")(h, film=(scale, shift))
    else:
      h = group_norm(self.groups, self.eps, "norm2")(h + emb[:, None, None, :])
    h = nn.Dropout(self.dropout)(nn.silu(h), deterministic=deterministic).astype(self.dtype)
    h = conv(c, 3, self.dtype, "conv2")(h)
    if x.shape[-1] != c:
      x = conv(c, 1, self.dtype, "conv_shortcut")(x.astype(self.dtype))
    return (x.astype(jnp.float32) + h.astype(jnp.float32))


class AddedKVAttention(nn.Module):
  """GLIDE's encoder-KV attention (diffusers `Attention` + `AttnAddedKVProcessor`).

  Queries come from the GroupNorm'd pixels; keys/values are [encoder tokens (add_k/v_proj) ; pixels
  (to_k/v)], or only the encoder tokens with `only_cross_attention`. Residual added at the end.
  `bias` is the additive [B, L_enc] mask of the encoder tokens.
  """
  head_dim: int
  groups: int = 32
  only_cross_attention: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, enc, bias=None):
    b, hh, ww, c = x.shape
    inner = c  # heads × head_dim == channels, as diffusers' SimpleCrossAttn blocks
    h = group_norm(self.groups, 1e-5, "group_norm")(x.reshape(b, hh * ww, c)).astype(self.dtype)
    q = split_heads(dense(inner, "to_q", self.dtype)(h), self.head_dim)
    enc = enc.astype(self.dtype)
    k = split_heads(dense(inner, "add_k_proj", self.dtype)(enc), self.head_dim)
    v = split_heads(dense(inner, "add_v_proj", self.dtype)(enc), self.head_dim)
    if bias is not None:
      bias = bias.astype(jnp.float32)
    if not self.only_cross_attention:
      k = jnp.concatenate([k, split_heads(dense(inner, "to_k", self.dtype)(h), self.head_dim)], axis=1)
      v = jnp.concatenate([v, split_heads(dense(inner, "to_v", self.dtype)(h), self.head_dim)], axis=1)
      if bias is not None:
        bias = jnp.pad(bias, ((0, 0), (0, hh * ww)))
    if bias is not None:
      bias = bias[:, None, None, :]
    out = dense(c, "to_out_0", self.dtype)(merge_heads(attend(q, k, v, bias)))
    return x + out.reshape(b, hh, ww, c).astype(jnp.float32)


class _Level(nn.Module):
  """Shared settings of the down / mid / up blocks (diffusers' block classes, one module each)."""
  out_channels: int
  num_layers: int
  attention: bool
  resample: bool = False
  attention_head_dim: int = 64
  only_cross_attention: bool = False
  scale_shift: bool = True
  groups: int = 32
  eps: float = 1e-5
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  remat: bool = False

  def _res(self, name, h, temb, deterministic, **extra):
    cls = nn.remat(ResnetBlock, static_argnums=(3,)) if self.remat else ResnetBlock
    return cls(self.out_channels, self.scale_shift, groups=self.groups, eps=self.eps, dropout=self.dropout,
               dtype=self.dtype, name=name, **extra)(h, temb, deterministic)

  def _attn(self, name, h, enc, bias):
    cls = nn.remat(AddedKVAttention) if self.remat else AddedKVAttention
    return cls(self.attention_head_dim, self.groups, self.only_cross_attention, self.dtype, name=name)(
        h, enc, bias)


class DownBlock(_Level):
  """ResnetDownsampleBlock2D / SimpleCrossAttnDownBlock2D. Returns (h, skip activations)."""

  @nn.compact
  def __call__(self, h, temb, enc, bias, deterministic=True):
    skips = []
    for j in range(self.num_layers):
      h = self._res(f"resnets_{j}", h, temb, deterministic)
      if self.attention:
        h = self._attn(f"attentions_{j}", h, enc, bias)
      skips.append(h)
    if self.resample:
      h = self._res("downsamplers_0", h, temb, deterministic, down=True)
      skips.append(h)
    return h, skips


class MidBlock(_Level):
  """UNetMidBlock2DSimpleCrossAttn (or UNetMidBlock2D without attention): resnet, [attention], resnet."""

  @nn.compact
  def __call__(self, h, temb, enc, bias, deterministic=True):
    h = self._res("resnets_0", h, temb, deterministic)
    if self.attention:
      h = self._attn("attentions_0", h, enc, bias)
    return self._res("resnets_1", h, temb, deterministic)


class UpBlock(_Level):
  """SimpleCrossAttnUpBlock2D / ResnetUpsampleBlock2D; consumes `num_layers` skips from the end."""

  @nn.compact
  def __call__(self, h, skips, temb, enc, bias, deterministic=True):
    for j in range(self.num_layers):
      h = jnp.concatenate([h, skips[-1 - j]], axis=-1)
      h = self._res(f"resnets_{j}", h, temb, deterministic)
      if self.attention:
        h = self._attn(f"attentions_{j}", h, enc, bias)
    if self.resample:
      h = self._res("upsamplers_0", h, temb, deterministic, up=True)
    return h


class UNet(nn.Module):
  """The decoder / super-resolution UNet (see module docstring).

  attention_levels[i]: level i's down block (and the mirrored up block) has added-KV attention after
  each residual block (diffusers SimpleCrossAttn*Block2D vs Resnet*sampleBlock2D). Attention needs
  `encoder_hidden_states` (`cross_attention_dim` is the width of those tokens; informational).
  """
  in_channels: int = 3
  out_channels: int = 6
  block_out_channels: Sequence[int] = (320, 640, 960, 1280)
  layers_per_block: int = 3
  attention_levels: Sequence[bool] = (False, True, True, True)
  mid_attention: bool = True
  attention_head_dim: int = 64
  cross_attention_dim: int | None = 1536
  only_cross_attention: bool = False
  scale_shift: bool = True
  norm_groups: int = 32
  norm_eps: float = 1e-5
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, sample, timesteps, encoder_hidden_states=None, encoder_mask=None, added_emb=None,
               deterministic: bool = True):
    """sample [B, H, W, in_channels]; timesteps [B] or scalar; encoder_hidden_states [B, L, Ce];
    encoder_mask [B, L] (1 = real token); added_emb [B, 4·C0] added to the time embedding."""
    chans = tuple(self.block_out_channels)
    levels = len(chans)
    if (any(self.attention_levels) or self.mid_attention) and encoder_hidden_states is None:
      raise ValueError("this UNet has attention layers, which need encoder_hidden_states (the decoder's tokens)")
    b = sample.shape[0]
    t = jnp.broadcast_to(jnp.asarray(timesteps), (b,))
    temb = TimestepEmbedding(4 * chans[0], 4 * chans[0], self.dtype, name="time_embedding")(
        timestep_embedding(t, chans[0])).astype(jnp.float32)
    if added_emb is not None:
      temb = temb + added_emb.astype(jnp.float32)
    bias = None
    if encoder_mask is not None:
      bias = (1.0 - encoder_mask.astype(jnp.float32)) * MASK_VALUE
    enc = encoder_hidden_states
    kw = dict(attention_head_dim=self.attention_head_dim, only_cross_attention=self.only_cross_attention,
              scale_shift=self.scale_shift, groups=self.norm_groups, eps=self.norm_eps, dropout=self.dropout,
              dtype=self.dtype, remat=self.remat)

    h = conv(chans[0], 3, self.dtype, "conv_in")(sample.astype(self.dtype)).astype(jnp.float32)
    skips = [h]
    for i, c in enumerate(chans):
      h, s = DownBlock(c, self.layers_per_block, bool(self.attention_levels[i]), i < levels - 1, **kw,
                       name=f"down_blocks_{i}")(h, temb, enc, bias, deterministic)
      skips.extend(s)
    h = MidBlock(chans[-1], 1, self.mid_attention, **kw, name="mid_block")(h, temb, enc, bias, deterministic)
    for i, c in enumerate(reversed(chans)):
      n = self.layers_per_block + 1
      h = UpBlock(c, n, bool(self.attention_levels[levels - 1 - i]), i < levels - 1, **kw,
                  name=f"up_blocks_{i}")(h, skips[len(skips) - n:], temb, enc, bias, deterministic)
      skips = skips[:len(skips) - n]
    h = nn.silu(group_norm(self.norm_groups, self.norm_eps, "conv_norm_out")(h)).astype(self.dtype)
    return conv(self.out_channels, 3, self.dtype, "conv_out")(h).astype(jnp.float32)


class TextProj(nn.Module):
  """diffusers `UnCLIPTextProjModel`: turns CLIP embeddings into the decoder's extra conditioning.

  Returns (encoder tokens [B, K + L, cross_attention_dim], additive time embedding [B, time_embed_dim]).
  `image_dropped` [B] bool swaps the image embedding for the learned classifier-free-guidance embedding
  (what diffusers does for the unconditional half of the batch).
  """
  clip_embeddings_dim: int = 768
  time_embed_dim: int = 1280
  cross_attention_dim: int = 1536
  clip_extra_context_tokens: int = 4
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, image_embeddings, prompt_embeds, text_encoder_hidden_states, image_dropped=None):
    d, k, ce = self.clip_embeddings_dim, self.clip_extra_context_tokens, self.cross_attention_dim
    cfg = self.param("learned_classifier_free_guidance_embeddings", nn.initializers.zeros, (d,), jnp.float32)
    image = image_embeddings.astype(jnp.float32)
    if image_dropped is not None:
      image = jnp.where(jnp.asarray(image_dropped)[:, None], cfg[None], image)
    image, prompt = image.astype(self.dtype), prompt_embeds.astype(self.dtype)
    time = (dense(self.time_embed_dim, "embedding_proj", self.dtype)(prompt).astype(jnp.float32)
            + dense(self.time_embed_dim, "clip_image_embeddings_project_to_time_embeddings", self.dtype)(
                image).astype(jnp.float32))
    extra = dense(k * ce, "clip_extra_context_tokens_proj", self.dtype)(image)
    # diffusers: reshape(B, -1, K).permute(0, 2, 1): token j holds elements j, j+K, j+2K, ...
    extra = extra.reshape(extra.shape[0], ce, k).transpose(0, 2, 1).astype(jnp.float32)
    text = dense(ce, "encoder_hidden_states_proj", self.dtype)(text_encoder_hidden_states.astype(self.dtype))
    text = nn.LayerNorm(epsilon=1e-5, dtype=jnp.float32, name="text_encoder_hidden_states_norm")(text)
    return jnp.concatenate([extra, text], axis=1), time


class Decoder(nn.Module):
  """text_proj + UNet: the 64px unCLIP decoder conditioned on a CLIP image embedding and the caption."""
  unet: UNet
  text_proj: TextProj

  def __call__(self, x, timesteps, image_embeddings, prompt_embeds, text_encoder_hidden_states, text_mask=None,
               image_dropped=None, deterministic: bool = True):
    """x [B, 64, 64, 3] noisy image; returns [B, 64, 64, out_channels] (ε and the variance interpolation v)."""
    enc, added = self.text_proj(image_embeddings, prompt_embeds, text_encoder_hidden_states, image_dropped)
    if text_mask is None:
      text_mask = jnp.ones(text_encoder_hidden_states.shape[:2], jnp.bool_)
    mask = jnp.pad(text_mask.astype(jnp.float32), ((0, 0), (self.text_proj.clip_extra_context_tokens, 0)),
                   constant_values=1.0)
    return self.unet(x, timesteps, enc, mask, added, deterministic)


def _field(m, key, default=None):
  """Reads a config field from a ConfigDict or a plain dict (a stage.json's "model")."""
  return m[key] if key in m else default


def unet_from_config(m, *, decoder: bool) -> UNet:
  """Builds a `UNet` from a model sub-config (`configs/decoder.py` or `configs/upsampler.py`, or stage.json)."""
  chans = tuple(m["block_out_channels"])
  return UNet(in_channels=m["in_channels"], out_channels=m["out_channels"], block_out_channels=chans,
              layers_per_block=m["layers_per_block"],
              attention_levels=tuple(m["attention_levels"]) if decoder else (False,) * len(chans),
              mid_attention=_field(m, "mid_attention", decoder), attention_head_dim=_field(m, "attention_head_dim", 64),
              cross_attention_dim=_field(m, "cross_attention_dim") if decoder else None,
              only_cross_attention=_field(m, "only_cross_attention", False), scale_shift=m["scale_shift"],
              norm_groups=_field(m, "norm_groups", 32), norm_eps=_field(m, "norm_eps", 1e-5),
              dropout=_field(m, "dropout", 0.0), dtype=jnp.dtype(_field(m, "dtype", "float32")),
              remat=_field(m, "remat", False))


def decoder_from_config(m) -> Decoder:
  """Builds the `Decoder` (UNet + TextProj) from a `configs/decoder.py` model sub-config or a stage.json dict."""
  unet = unet_from_config(m, decoder=True)
  text_proj = TextProj(clip_embeddings_dim=m["clip_embeddings_dim"], time_embed_dim=4 * unet.block_out_channels[0],
                       cross_attention_dim=m["cross_attention_dim"],
                       clip_extra_context_tokens=_field(m, "clip_extra_context_tokens", 4), dtype=unet.dtype)
  return Decoder(unet=unet, text_proj=text_proj)


def init_decoder(model: Decoder, rng, *, image_size: int, text_len: int, batch: int = 1):
  """Initialises a `Decoder`'s variables (use under `jax.eval_shape` for shapes only)."""
  d = model.text_proj.clip_embeddings_dim
  x = jnp.zeros((batch, image_size, image_size, model.unet.in_channels), jnp.float32)
  e = jnp.zeros((batch, d), jnp.float32)
  return model.init(rng, x, jnp.zeros((batch,), jnp.int32), e, e, jnp.zeros((batch, text_len, d), jnp.float32))


def init_unet(model: UNet, rng, *, image_size: int, batch: int = 1):
  """Initialises an unconditional (super-resolution) `UNet`."""
  x = jnp.zeros((batch, image_size, image_size, model.in_channels), jnp.float32)
  return model.init(rng, x, jnp.zeros((batch,), jnp.int32))
