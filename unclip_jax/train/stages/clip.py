"""CLIP stage: the contrastive loss over the global batch (softmax or SigLIP) on image-caption data, with
optional word-order hard negatives (`train.hard_negatives`, NegCLIP): each caption's perturbed twin, such as
the relation flipped, joins the batch as one more wrong caption for every image; with
`train.image_hard_negatives` a flipped relation's picture too (the image mirrored across the relation's axis,
`hard_negatives.flip_axis`): its caption must prefer its own image to the mirror, and the flipped caption the
mirror (`contrastive.flipped_image_loss`). With `train.near_misses` (shapes data only), each scene is also drawn
again with one thing wrong (`unclip_jax.data.near_misses`), and its caption must prefer the scene to that near
miss (`contrastive.near_miss_loss`)."""

from __future__ import annotations

import json

import grain.python as grain
import jax
import jax.numpy as jnp
import numpy as np

from unclip_jax.data import hard_negatives, near_misses, pipeline, shapes
from unclip_jax.errors import UserError
from unclip_jax.models import clip as clip_model
from unclip_jax.models.tokenizer import Tokenizer
from unclip_jax.train import contrastive
from unclip_jax.train.stages.base import AXIS, Stage


class Tokenize(grain.MapTransform):
  """Adds `tokens` (int32 [context]) from the example's caption."""

  def __init__(self, context_length: int):
    self.context_length = context_length
    self._tokenizer = None

  def map(self, example):
    if self._tokenizer is None:  # built lazily: grain may pickle transforms into worker processes
      self._tokenizer = Tokenizer(self.context_length)
    example["tokens"] = np.asarray(self._tokenizer([example["caption"]])[0], np.int32)
    return example


class HardNegative(grain.RandomMapTransform):
  """Adds `negative_tokens` (int32 [context]), one hard negative of the caption drawn with the record's own
  random stream (reproducible, and resumed with the data iterator), and `has_negative` (False, with the
  empty caption's tokens, where the caption has none of the asked kinds). `exclude` drops negatives that no
  training image fits (`hard_negatives.sample_negative`). With `flips`, also `negative_flip` (int32): the
  mirror of the image that shows the negative (`hard_negatives.flip_axis`; 0 where none does)."""

  def __init__(self, context_length: int, kinds: tuple[str, ...], exclude=None, flips: bool = False):
    self.context_length, self.kinds, self.exclude, self.flips = context_length, kinds, exclude, flips
    self._tokenizer = None

  def random_map(self, example, rng):
    if self._tokenizer is None:
      self._tokenizer = Tokenizer(self.context_length)
    negative = hard_negatives.sample_negative(str(example["caption"]), self.kinds, rng, self.exclude)
    example["negative_tokens"] = np.asarray(self._tokenizer([negative or ""])[0], np.int32)
    example["has_negative"] = np.asarray(negative is not None)
    if self.flips:
      example["negative_flip"] = np.asarray(hard_negatives.flip_axis(str(example["caption"]), negative), np.int32)
    return example


class NearMiss(grain.RandomMapTransform):
  """Adds `near_miss` (float32 image in [-1, 1]), the scene drawn from its spec with one thing wrong, with the
  record's own random stream (reproducible, and resumed with the data iterator), and `has_near_miss` (False,
  with a blank image, where the scene has none of the asked kinds)."""

  def __init__(self, kinds: tuple[str, ...]):
    self.kinds = kinds

  def random_map(self, example, rng):
    size = example["image"].shape[0]
    image, _ = near_misses.near_miss(json.loads(example["spec"]), size, rng, self.kinds)
    example["has_near_miss"] = np.asarray(image is not None)
    example["near_miss"] = (np.zeros((size, size, 3), np.float32) if image is None
                            else np.asarray(image, np.float32) / 127.5 - 1.0)
    return example


def mirrored(images, flip):
  """Each image mirrored as `flip` says (`hard_negatives.FLIP_LEFT_RIGHT`, `FLIP_UP_DOWN`; else unchanged)."""
  flip = flip[:, None, None, None]
  return jnp.where(flip == hard_negatives.FLIP_LEFT_RIGHT, images[:, :, ::-1],
                   jnp.where(flip == hard_negatives.FLIP_UP_DOWN, images[:, ::-1], images))


class ClipStage(Stage):
  kind = "clip"

  def __init__(self, config):
    super().__init__(config)
    try:
      self.model_config = clip_model.CLIPConfig.from_dict(dict(config.model))
    except (TypeError, ValueError) as e:
      raise UserError(f"invalid CLIP model config: {e}") from None
    self.model = clip_model.CLIP(self.model_config)
    try:
      self.negative_kinds = hard_negatives.parse_kinds(config.train.get("hard_negatives", ""))
    except ValueError as e:
      raise UserError(f"--config.train.hard_negatives: {e}") from None
    self.image_negatives = bool(config.train.get("image_hard_negatives", False))
    if self.image_negatives and "relation" not in self.negative_kinds:
      raise UserError("--config.train.image_hard_negatives needs 'relation' in --config.train.hard_negatives "
                      "(the mirrored image is the picture of a flipped relation)")
    try:
      self.near_miss_kinds = near_misses.parse_kinds(config.train.get("near_misses", ""))
    except ValueError as e:
      raise UserError(f"--config.train.near_misses: {e}") from None
    if self.near_miss_kinds and config.data.name != "shapes":
      raise UserError("--config.train.near_misses needs the shapes data (near misses are drawn from its scene specs); "
                      f"config.data.name is {config.data.name!r}")

  def operations(self):
    ops = [pipeline.ImageCaption(), Tokenize(self.model_config.context_length)]
    if self.negative_kinds:
      # The shapes train split never shows its held-out combinations, so negatives naming them are dropped.
      exclude = shapes.caption_is_heldout if self.config.data.name == "shapes" else None
      ops.append(HardNegative(self.model_config.context_length, self.negative_kinds, exclude, self.image_negatives))
    if self.near_miss_kinds:
      ops.append(NearMiss(self.near_miss_kinds))
    return ops

  def check_example(self, example):
    size = example["image"].shape[0]
    if size != self.model_config.image_size:
      raise UserError(f"the dataset's images are {size}px but the CLIP model takes {self.model_config.image_size}px; "
                      "prepare the data at the model's size or change config.model.image_size")

  def init_params(self, rng):
    return self.model.init(rng, *clip_model.dummy_inputs(self.model_config))["params"]

  def batch_spec(self, n):
    c = self.model_config
    spec = {"image": jax.ShapeDtypeStruct((n, c.image_size, c.image_size, 3), jnp.float32),
            "tokens": jax.ShapeDtypeStruct((n, c.context_length), jnp.int32)}
    if self.negative_kinds:
      spec.update(negative_tokens=jax.ShapeDtypeStruct((n, c.context_length), jnp.int32),
                  has_negative=jax.ShapeDtypeStruct((n,), jnp.bool_))
    if self.image_negatives:
      spec["negative_flip"] = jax.ShapeDtypeStruct((n,), jnp.int32)
    if self.near_miss_kinds:
      spec.update(near_miss=jax.ShapeDtypeStruct((n, c.image_size, c.image_size, 3), jnp.float32),
                  has_near_miss=jax.ShapeDtypeStruct((n,), jnp.bool_))
    return spec

  def loss(self, params, extra, batch, rng):
    del extra, rng
    normalize = lambda x: clip_model.normalize_images(x, self.model_config, value_range=(-1.0, 1.0))  # noqa: E731
    images = normalize(batch["image"])
    # One image-tower call for the images, their mirrors and their near misses, and one text-tower call for the
    # captions and their negatives; the extra rows are split off the embeddings below.
    tower_images, tokens = [images], [batch["tokens"]]
    if self.image_negatives:
      tower_images.append(mirrored(images, batch["negative_flip"]))
    if self.near_miss_kinds:
      tower_images.append(normalize(batch["near_miss"]))
    if self.negative_kinds:
      tokens.append(batch["negative_tokens"])
    out = self.model.apply({"params": params}, jnp.concatenate(tower_images), jnp.concatenate(tokens))
    image_parts = jnp.split(out["image_embeds"], len(tower_images))
    text_parts = jnp.split(out["text_embeds"], len(tokens))
    out = dict(out, text_embeds=text_parts[0], image_embeds=image_parts[0])
    metrics = {}
    if not self.negative_kinds:
      loss = contrastive.contrastive_loss(self.config.train.loss, out, axis_name=AXIS)
    else:
      negatives, valid = text_parts[1], batch["has_negative"].astype(bool)
      loss = contrastive.contrastive_loss(self.config.train.loss, out, axis_name=AXIS, negative_embeds=negatives,
                                          negative_valid=valid)
      # How often an image's own caption beats its hard negative (the word-order probe, on training data).
      img, txt, neg = (contrastive.normalize(x) for x in (out["image_embeds"], out["text_embeds"], negatives))
      wins = jnp.sum(((img * txt).sum(-1) > (img * neg).sum(-1)) & valid)
      metrics["negative_accuracy"] = jax.lax.psum(wins, AXIS) / jnp.maximum(jax.lax.psum(jnp.sum(valid), AXIS), 1)
      if self.image_negatives:
        flip_loss, flip_accuracy = contrastive.flipped_image_loss(
            out["image_embeds"], image_parts[1], out["text_embeds"], negatives, out["logit_scale"],
            valid & (batch["negative_flip"] > 0), AXIS)
        loss = loss + flip_loss
        metrics.update(flip_loss=flip_loss, flip_accuracy=flip_accuracy)
    if self.near_miss_kinds:
      near_loss, near_accuracy = contrastive.near_miss_loss(
          out["image_embeds"], image_parts[-1], out["text_embeds"], out["logit_scale"],
          batch["has_near_miss"].astype(bool), AXIS)
      loss = loss + near_loss
      metrics.update(near_miss_loss=near_loss, near_miss_accuracy=near_accuracy)
    return loss, {"loss": loss, "logit_scale": out["logit_scale"], **metrics}

  def postprocess(self, params):
    return contrastive.clamp_logit_scale(params)

  def export(self, params, extra):
    del extra
    return "clip", params, self.model_config.to_dict()
