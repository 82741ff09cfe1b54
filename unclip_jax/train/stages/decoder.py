"""Decoder stage: the 64px (tiny: 16px) image from its CLIP image embedding and caption, with the hybrid
loss (learned variance). For classifier-free guidance the image embedding is swapped for the learned
embedding `train.clip_emb_drop` of the time and the caption for the empty caption `train.text_drop` of
the time (unCLIP §2.1). `train.image_embedding_noise` > 0 noises the image embeddings it trains on, so that
the decoder learns to draw from embeddings as scattered as a prior's samples, not only from the renders' own
(conditioning augmentation, as cascades noise a previous stage's output). Every `train.sample_every` steps it
draws a grid: data on top, samples below."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from unclip_jax import diffusion
from unclip_jax import images as image_io
from unclip_jax.errors import UserError
from unclip_jax.models import unet as unet_model
from unclip_jax.pipeline.settings import StageSampling, sample_kwargs
from unclip_jax.train.stages.base import split_rngs
from unclip_jax.train.stages.embedded import TEXT_KEYS, EmbeddedStage, drop_captions

SAMPLE_COUNT = 8
# The noise's key is folded from the step's key, not split with the others (`loss`), so every other draw stays as
# it was: runs without the noise are unchanged.
EMBEDDING_NOISE_KEY = 0x454D


def noised_embeddings(key: jax.Array, embeddings: jax.Array, scale: float) -> jax.Array:
  """`embeddings` (B, E) plus Gaussian noise of `scale` times each row's RMS per component: scale 0.3 leaves
  a cosine of about 1/sqrt(1 + 0.3²) = 0.96 with the clean row, whatever the CLIP's embedding norm."""
  if scale <= 0:
    return embeddings
  rms = jnp.sqrt(jnp.mean(jnp.square(embeddings), axis=-1, keepdims=True))
  return embeddings + scale * rms * jax.random.normal(key, embeddings.shape, embeddings.dtype)


class DecoderStage(EmbeddedStage):
  kind = "decoder"

  def __init__(self, config):
    super().__init__(config)
    self.build_diffusion_model()
    self.size = int(config.model.image_size)
    self.embedding_noise = float(config.train.get("image_embedding_noise", 0.0))
    if not self.embedding_noise >= 0:
      raise UserError(f"train.image_embedding_noise is {self.embedding_noise}; use 0 (off) or a positive scale such "
                      "as 0.3 (noise of 0.3 times each embedding's RMS)")

  def init_params(self, rng):
    return unet_model.init_decoder(self.model, rng, image_size=self.size,
                                   text_len=int(self.config.model.text_len))["params"]

  def make_extra(self):
    return {"null_text": self.empty_caption(), **self.timestep_extra()}

  def _text(self, n):
    d = self.model.text_proj.clip_embeddings_dim
    return self.text_spec(n, int(self.config.model.text_len), d, d)

  def abstract_extra(self):
    return {"null_text": self._text(None), **super().abstract_extra()}

  def batch_spec(self, n):
    d = self.model.text_proj.clip_embeddings_dim
    return dict(self._text(n), image=jax.ShapeDtypeStruct((n, self.size, self.size, 3), jnp.float32),
                image_embedding=jax.ShapeDtypeStruct((n, d), jnp.float32))

  def images(self, batch_images):
    """Data images at the decoder's resolution (area-averaged when the dataset is larger)."""
    if batch_images.shape[1] == self.size:
      return batch_images
    return jax.image.resize(batch_images, (batch_images.shape[0], self.size, self.size, 3), "linear", antialias=True)

  def _apply(self, params, x_t, t, cond, rng=None):
    """The decoder on conditioning `cond` (embeddings, states, mask, `image_dropped`); dropout iff `rng`."""
    kwargs = {"deterministic": rng is None}
    if rng is not None:
      kwargs["rngs"] = {"dropout": rng}
    return self.model.apply({"params": params}, x_t, t, cond["image_embedding"], cond["text_embedding"],
                            cond["text_states"], cond["text_mask"], cond["image_dropped"], **kwargs)

  def loss(self, params, extra, batch, rng):
    keys = split_rngs(rng, ("text", "image", "t", "noise", "dropout"))
    cond, _ = drop_captions(keys["text"], batch, extra["null_text"], float(self.config.train.text_drop))
    cond["image_embedding"] = noised_embeddings(jax.random.fold_in(rng, EMBEDDING_NOISE_KEY),
                                                batch["image_embedding"], self.embedding_noise)
    cond["image_dropped"] = jax.random.bernoulli(keys["image"], float(self.config.train.clip_emb_drop),
                                                 (batch["image_embedding"].shape[0],))
    x0 = self.images(batch["image"])
    t, weights = self.timesteps(keys["t"], x0.shape[0], extra)
    noise = jax.random.normal(keys["noise"], x0.shape)
    model_fn = lambda x_t, timesteps: self._apply(params, x_t, timesteps, cond, keys["dropout"])  # noqa: E731
    terms = diffusion.training_losses(self.process, model_fn, x0, t, noise, loss=self.config.diffusion.loss)
    loss = jnp.mean(terms["loss"] * weights)
    extra_metrics = {"vb": jnp.mean(terms["vb"])} if "vb" in terms else {}
    return loss, self.timestep_metrics(loss, t, terms["loss"], mse=jnp.mean(terms["mse"]), **extra_metrics)

  def samples(self, params, extra, batch, rng):
    """Guided samples for the first examples of `batch`, under the real images: a 2-row grid's content."""
    n = min(SAMPLE_COUNT, batch["image"].shape[0])
    cond = {k: jnp.asarray(batch[k][:n]) for k in TEXT_KEYS + ("image_embedding",)}
    cond["image_dropped"] = jnp.zeros((n,), bool)
    # Unconditional branch: empty caption and the learned embedding in place of the image embedding.
    uncond = {k: jnp.broadcast_to(jnp.asarray(extra["null_text"][k])[None], cond[k].shape) for k in TEXT_KEYS}
    uncond.update(image_embedding=cond["image_embedding"], image_dropped=jnp.ones((n,), bool))
    s = StageSampling.from_dict(self.config.diffusion.sample.to_dict())
    process = self.process.respace(s.steps)
    model_fn = lambda x_t, t, c: self._apply(params, x_t, t, c)  # noqa: E731
    draw = jax.jit(lambda key: diffusion.sample(
        process, model_fn, (n, self.size, self.size, 3), key, cond=cond, uncond=uncond,
        guidance_scale=s.guidance_scale, **sample_kwargs(s)))
    real = image_io.to_uint8(self.images(jnp.asarray(batch["image"][:n])))
    return np.concatenate([real, image_io.to_uint8(draw(rng))])

  def export(self, params, extra):
    del extra
    return "decoder", params, {"preset": self.config.get("preset", ""), "stage": "decoder", "source": "training",
                               "model": self.config.model.to_dict(), "diffusion": self.config.diffusion.to_dict()}
