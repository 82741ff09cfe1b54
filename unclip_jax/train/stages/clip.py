"""CLIP stage: the contrastive loss over the global batch (softmax or SigLIP) on image-caption data."""

from __future__ import annotations

import grain.python as grain
import jax
import jax.numpy as jnp
import numpy as np

from unclip_jax.data import pipeline
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


class ClipStage(Stage):
  kind = "clip"

  def __init__(self, config):
    super().__init__(config)
    try:
      self.model_config = clip_model.CLIPConfig.from_dict(dict(config.model))
    except (TypeError, ValueError) as e:
      raise UserError(f"invalid CLIP model config: {e}") from None
    self.model = clip_model.CLIP(self.model_config)

  def operations(self):
    return [pipeline.ImageCaption(), Tokenize(self.model_config.context_length)]

  def check_example(self, example):
    size = example["image"].shape[0]
    if size != self.model_config.image_size:
      raise UserError(f"the dataset's images are {size}px but the CLIP model takes {self.model_config.image_size}px; "
                      "prepare the data at the model's size or change config.model.image_size")

  def init_params(self, rng):
    return self.model.init(rng, *clip_model.dummy_inputs(self.model_config))["params"]

  def batch_spec(self, n):
    c = self.model_config
    return {"image": jax.ShapeDtypeStruct((n, c.image_size, c.image_size, 3), jnp.float32),
            "tokens": jax.ShapeDtypeStruct((n, c.context_length), jnp.int32)}

  def loss(self, params, extra, batch, rng):
    del extra, rng
    images = clip_model.normalize_images(batch["image"], self.model_config, value_range=(-1.0, 1.0))
    out = self.model.apply({"params": params}, images, batch["tokens"])
    loss = contrastive.contrastive_loss(self.config.train.loss, out, axis_name=AXIS)
    return loss, {"loss": loss, "logit_scale": out["logit_scale"]}

  def postprocess(self, params):
    return contrastive.clamp_logit_scale(params)

  def export(self, params, extra):
    del extra
    return "clip", params, self.model_config.to_dict()
