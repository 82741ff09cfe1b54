"""What the prior and decoder stages share: reading `embedded` records and the empty-caption encoding.

Classifier-free guidance needs the model to have seen "no caption". As in Karlo and diffusers, that is
the CLIP encoding of the empty string, computed once from the CLIP checkpoint that embedded the dataset
(named in its metadata) by `unclip_jax.models.clip_encoder.encode_empty_caption`, the same function
sampling uses, kept in the train state's `extra` and swapped in for dropped captions.
"""

from __future__ import annotations

import grain.python as grain
import jax
import jax.numpy as jnp
import numpy as np

from unclip_jax.data import embedded as embedded_data
from unclip_jax.errors import UserError
from unclip_jax.train.stages.base import Stage

TEXT_KEYS = ("text_embedding", "text_states", "text_mask")


class EmbeddedRecord(grain.MapTransform):
  """An `embedded` record → float32 arrays (image in [-1, 1]); strings stay as they are."""

  def map(self, example):
    out = {"image": np.asarray(example["image"], np.float32) / 127.5 - 1.0,
           "text_embedding": np.asarray(example["text_embedding"], np.float32),
           "text_states": np.asarray(example["text_states"], np.float32),
           "text_mask": np.asarray(example["text_mask"], bool),
           "image_embedding": np.asarray(example["image_embedding"], np.float32)}
    out["caption"] = example["caption"].decode() if isinstance(example["caption"], bytes) else example["caption"]
    return out


class EmbeddedStage(Stage):
  """Base of the stages that train on `python -m unclip_jax.embed` output."""

  def operations(self):
    return [EmbeddedRecord()]

  def metadata(self):
    data = self.config.data
    if data.name != embedded_data.NAME or not data.get("config"):
      raise UserError(f"the {self.config.stage} stage trains on an embedded dataset: set --config.data.name=embedded "
                      "and --config.data.config=NAME (the --name given to `python -m unclip_jax.embed`)")
    return embedded_data.load_metadata(data.data_dir, data.config)

  def text_spec(self, n: int | None, length: int, width: int, dim: int) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes of the text conditioning of n examples (n=None: one example without the batch axis)."""
    lead = () if n is None else (n,)
    return {"text_embedding": jax.ShapeDtypeStruct(lead + (dim,), jnp.float32),
            "text_states": jax.ShapeDtypeStruct(lead + (length, width), jnp.float32),
            "text_mask": jax.ShapeDtypeStruct(lead + (length,), jnp.bool_)}

  def empty_caption(self) -> dict[str, np.ndarray]:
    """The CLIP encoding of "" with the checkpoint that embedded the data: embedding, states, mask (no batch axis)."""
    from unclip_jax.models import clip as clip_model
    from unclip_jax.models.clip_encoder import encode_empty_caption, load_clip

    config, params = load_clip(self.metadata()["clip"]["checkpoint"])
    encoding = encode_empty_caption(clip_model.CLIP(config), params, config.context_length)
    return {k: v[0] for k, v in zip(TEXT_KEYS, encoding)}


def drop_captions(key, batch, null, rate: float):
  """The batch's text conditioning with each example's caption replaced by `null` with probability `rate`."""
  dropped = jax.random.bernoulli(key, rate, (batch["text_embedding"].shape[0],))
  out = {}
  for k in TEXT_KEYS:
    mask = dropped.reshape((-1,) + (1,) * (batch[k].ndim - 1))
    out[k] = jnp.where(mask, jnp.asarray(null[k])[None], batch[k])
  return out, dropped
