"""Prior stage: predict the standardised CLIP image embedding x0 from its noised version and the caption
(text embedding + per-token states), dropping the caption `train.text_drop` of the time (unCLIP §2.2)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from unclip_jax import diffusion
from unclip_jax.data import embedded as embedded_data
from unclip_jax.models import prior as prior_model
from unclip_jax.train.stages.base import split_rngs
from unclip_jax.train.stages.embedded import EmbeddedStage, drop_captions


class PriorStage(EmbeddedStage):
  kind = "prior"

  def __init__(self, config):
    super().__init__(config)
    self.build_diffusion_model()

  def init_params(self, rng):
    return prior_model.init_variables(self.model, rng)["params"]

  def make_extra(self):
    mean, std = embedded_data.clip_stats(self.metadata(), self.config.data.get("split", "train"))
    stats = {"clip_mean": jnp.asarray(mean), "clip_std": jnp.asarray(std).clip(1e-6)}
    return {"stats": stats, "null_text": self.empty_caption(), **self.timestep_extra()}

  def _text(self, n):
    m = self.model
    return self.text_spec(n, m.num_embeddings, m.embedding_dim, m.embedding_dim)

  def abstract_extra(self):
    d = self.model.embedding_dim
    stats = {k: jax.ShapeDtypeStruct((d,), jnp.float32) for k in ("clip_mean", "clip_std")}
    return {"stats": stats, "null_text": self._text(None), **super().abstract_extra()}

  def batch_spec(self, n):
    return dict(self._text(n), image_embedding=jax.ShapeDtypeStruct((n, self.model.embedding_dim), jnp.float32))

  def loss(self, params, extra, batch, rng):
    keys = split_rngs(rng, ("drop", "t", "noise", "dropout"))
    text, _ = drop_captions(keys["drop"], batch, extra["null_text"], float(self.config.train.text_drop))
    x0 = prior_model.normalize_embeddings(extra["stats"], batch["image_embedding"])
    t, weights = self.timesteps(keys["t"], x0.shape[0], extra)
    noise = jax.random.normal(keys["noise"], x0.shape)

    def model_fn(x_t, timesteps):
      return self.model.apply({"params": params, "stats": extra["stats"]}, x_t, timesteps, text["text_embedding"],
                              text["text_states"], text["text_mask"], deterministic=False,
                              rngs={"dropout": keys["dropout"]})

    terms = diffusion.training_losses(self.process, model_fn, x0, t, noise, loss=self.config.diffusion.loss)
    loss = jnp.mean(terms["loss"] * weights)
    return loss, self.timestep_metrics(loss, t, terms["loss"])

  def from_export(self, tree, extra):
    # The model learned in the normalised coordinates of the checkpoint's statistics: keep them.
    return tree["params"], {**extra, "stats": tree["stats"]}

  def export(self, params, extra):
    return "prior", {"params": params, "stats": extra["stats"]}, {
        "preset": self.config.get("preset", ""), "stage": "prior", "source": "training",
        "model": self.config.model.to_dict(), "diffusion": self.config.diffusion.to_dict()}
