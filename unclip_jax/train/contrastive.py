"""Contrastive image-text losses over the GLOBAL batch, written per device with named-axis collectives.

Call these inside `jax.pmap(..., axis_name=A)` or `jax.shard_map` with the batch split over `A`. Each
device all-gathers the embeddings of every device and scores its LOCAL rows against the GLOBAL columns
(open_clip's `--local-loss`: memory O(local × global) instead of O(global²)); its labels are offset by
`axis_index * local_batch`. The value is `pmean`-ed, so it equals the single-device loss over the whole
batch. Gradients flow through `all_gather` (whose transpose is a reduce-scatter), so each device's
embeddings receive the contributions of every device's rows. What the gradient means depends on the
wrapper (both checked against the single-device loss in tests/train/test_clip_contrastive.py):
  * `jax.shard_map` (replication checking on, the default): `jax.grad` of the loss is exactly the
    gradient of the global loss; replicated parameters come back already reduced over the axis.
  * `jax.pmap`: the per-device gradient is that of the SUM of the per-device losses (N × the global
    one); the usual `jax.lax.pmean(grads, A)` of the parameter gradients gives the global gradient.
With `axis_name=None` the same functions are the plain single-device losses.

Temperature: the learnable `logit_scale` is a log-scale (CLIP init ln(1/0.07)); it is clamped at ln(100)
inside the loss, and `clamp_logit_scale` clamps the parameter after each update as open_clip does.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

MAX_LOGIT_SCALE = math.log(100.0)


def normalize(x):
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _gather(x, axis_name):
  """(local, D) → (global, D) and this device's row offset in the global batch."""
  if axis_name is None:
    return x, 0
  return jax.lax.all_gather(x, axis_name, tiled=True), jax.lax.axis_index(axis_name) * x.shape[0]


def _mean_over_devices(x, axis_name):
  return x if axis_name is None else jax.lax.pmean(x, axis_name)


def _negative_logits(img, scale, negative_embeds, negative_valid, axis_name):
  """(local, global) logits of the images against every device's hard-negative captions; a row without a
  negative (`negative_valid` False) is a column of -inf, which no softmax or sigmoid term counts."""
  neg, _ = _gather(normalize(negative_embeds), axis_name)
  valid, _ = _gather(negative_valid, axis_name)
  return jnp.where(valid[None, :], scale * img @ neg.T, -jnp.inf), valid


def clip_softmax_loss(image_embeds, text_embeds, logit_scale, axis_name: str | None = None, *,
                      negative_embeds=None, negative_valid=None):
  """Symmetric InfoNCE (CLIP): mean of image→text and text→image cross-entropies over the global batch.

  Embeddings need not be normalised (they are L2-normalised here). With `negative_embeds` (local, D), the
  embeddings of hard-negative captions (`unclip_jax.data.hard_negatives`; rows where `negative_valid` is
  False have none), every image is also scored against every device's negatives, as extra wrong columns of
  the image→text softmax (NegCLIP); text→image is unchanged. Returns a scalar, the same on every device.
  """
  img, txt = normalize(image_embeds), normalize(text_embeds)
  all_img, offset = _gather(img, axis_name)
  all_txt, _ = _gather(txt, axis_name)
  scale = jnp.exp(jnp.minimum(logit_scale, MAX_LOGIT_SCALE))
  labels = jnp.arange(img.shape[0]) + offset
  logits_per_image = scale * img @ all_txt.T  # (local, global)
  logits_per_text = scale * txt @ all_img.T
  if negative_embeds is not None:
    negative_logits, _ = _negative_logits(img, scale, negative_embeds, negative_valid, axis_name)
    logits_per_image = jnp.concatenate([logits_per_image, negative_logits], axis=1)  # labels still index the first part
  loss = 0.5 * (optax.softmax_cross_entropy_with_integer_labels(logits_per_image, labels).mean()
                + optax.softmax_cross_entropy_with_integer_labels(logits_per_text, labels).mean())
  return _mean_over_devices(loss, axis_name)


def flipped_image_loss(image_embeds, mirror_embeds, text_embeds, negative_embeds, logit_scale, valid,
                       axis_name: str | None = None):
  """Image-side hard negatives of flipped relations: (loss, accuracy), the same on every device.

  Per valid row, the caption must score its image above the image's mirror (the picture of its flipped
  twin, `hard_negatives.flip_axis`), and the flipped twin the mirror above the image; each is a logistic
  loss on the scaled cosine difference, summed, averaged over the global batch's valid rows. A pairwise term,
  not more softmax columns: the two pictures differ only in placement, and so the term is all about it.
  `accuracy`: how often the caption prefers its own image to the mirror.
  """
  img, mir, txt, neg = (normalize(x) for x in (image_embeds, mirror_embeds, text_embeds, negative_embeds))
  scale = jnp.exp(jnp.minimum(logit_scale, MAX_LOGIT_SCALE))
  own, own_mirror = jnp.sum(txt * img, -1), jnp.sum(txt * mir, -1)
  twin, twin_mirror = jnp.sum(neg * img, -1), jnp.sum(neg * mir, -1)
  terms = jax.nn.softplus(scale * (own_mirror - own)) + jax.nn.softplus(scale * (twin - twin_mirror))
  return _valid_means(terms, own > own_mirror, valid, axis_name)


def near_miss_loss(image_embeds, near_miss_embeds, text_embeds, logit_scale, valid, axis_name: str | None = None):
  """Image-side near misses (`unclip_jax.data.near_misses`): (loss, accuracy), the same on every device.

  Per valid row, the caption must score its image above the image's near miss (the same scene drawn with one
  thing wrong): a logistic loss on the scaled cosine difference, averaged over the global batch's valid rows.
  Pairwise, like `flipped_image_loss`: the two pictures differ in one object only, so the term is about that.
  `accuracy`: how often the caption prefers its own image to the near miss.
  """
  img, near, txt = (normalize(x) for x in (image_embeds, near_miss_embeds, text_embeds))
  scale = jnp.exp(jnp.minimum(logit_scale, MAX_LOGIT_SCALE))
  own, missed = jnp.sum(txt * img, -1), jnp.sum(txt * near, -1)
  return _valid_means(jax.nn.softplus(scale * (missed - own)), own > missed, valid, axis_name)


def _valid_means(terms, wins, valid, axis_name):
  """(mean of `terms`, share of `wins`) over the rows where `valid` holds, across the whole global batch."""
  valid = valid.astype(jnp.float32)
  total = lambda x: jax.lax.psum(x, axis_name) if axis_name else x  # noqa: E731
  count = jnp.maximum(total(jnp.sum(valid)), 1.0)
  return total(jnp.sum(terms * valid)) / count, total(jnp.sum(wins * valid)) / count


def siglip_loss(image_embeds, text_embeds, logit_scale, logit_bias, axis_name: str | None = None, *,
                negative_embeds=None, negative_valid=None):
  """SigLIP pairwise sigmoid loss: -Σ_ij log σ(±(t·x_i·y_j + b)) / global_batch, + on matched pairs.

  Computed on local images × all gathered texts (every pair is still counted exactly once). With
  `negative_embeds` (see `clip_softmax_loss`), every image × every valid hard negative is one more pair
  with the minus sign. SigLIP initialises `logit_scale = ln 10` and `logit_bias = -10`.
  """
  img, txt = normalize(image_embeds), normalize(text_embeds)
  all_txt, offset = _gather(txt, axis_name)
  scale = jnp.exp(jnp.minimum(logit_scale, MAX_LOGIT_SCALE))
  logits = scale * img @ all_txt.T + logit_bias  # (local, global)
  positive = jnp.arange(all_txt.shape[0])[None, :] == (jnp.arange(img.shape[0]) + offset)[:, None]
  signs = jnp.where(positive, 1.0, -1.0)
  loss = -jnp.sum(jax.nn.log_sigmoid(signs * logits)) / img.shape[0]
  if negative_embeds is not None:
    negative_logits, valid = _negative_logits(img, scale, negative_embeds, negative_valid, axis_name)
    terms = jnp.where(valid[None, :], jax.nn.log_sigmoid(-(negative_logits + logit_bias)), 0.0)
    loss = loss - jnp.sum(terms) / img.shape[0]
  return _mean_over_devices(loss, axis_name)


def contrastive_loss(kind: str, outputs: dict[str, Any], axis_name: str | None = None, *, negative_embeds=None,
                     negative_valid=None):
  """Dispatches on the config's `loss` field ('softmax' | 'sigmoid') given the dict `CLIP.__call__` returns,
  with optional hard-negative caption embeddings (see `clip_softmax_loss`)."""
  negatives = {"negative_embeds": negative_embeds, "negative_valid": negative_valid}
  if kind == "softmax":
    return clip_softmax_loss(outputs["image_embeds"], outputs["text_embeds"], outputs["logit_scale"], axis_name,
                             **negatives)
  if kind == "sigmoid":
    if "logit_bias" not in outputs:
      raise ValueError("the sigmoid loss needs a model with a logit bias (set init_logit_bias in the config)")
    return siglip_loss(outputs["image_embeds"], outputs["text_embeds"], outputs["logit_scale"],
                       outputs["logit_bias"], axis_name, **negatives)
  raise ValueError(f"unknown contrastive loss {kind!r}; expected 'softmax' or 'sigmoid'")


def clamp_logit_scale(params, max_value: float = MAX_LOGIT_SCALE):
  """Returns `params` with `logit_scale` clamped to [0, ln 100], as open_clip does after every step."""
  if "logit_scale" not in params:
    return params
  params = dict(params)
  params["logit_scale"] = jnp.clip(params["logit_scale"], 0.0, max_value)
  return params

