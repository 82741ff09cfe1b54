"""The decoder's conditioning augmentation (`train.image_embedding_noise`): its size, and that the stage's loss
sees it only when it is on (a run without it trains exactly as before it existed)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unclip_jax.errors import UserError
from unclip_jax.train import config_loader
from unclip_jax.train.stages.decoder import DecoderStage, noised_embeddings


def test_the_noise_is_its_scale_times_each_rows_rms():
  e = jax.random.normal(jax.random.key(0), (4096, 64)) * jnp.linspace(0.5, 20.0, 4096)[:, None]
  assert noised_embeddings(jax.random.key(1), e, 0.0) is e
  noised = noised_embeddings(jax.random.key(1), e, 0.3)
  rms = jnp.sqrt(jnp.mean(e ** 2, axis=-1))
  relative = jnp.sqrt(jnp.mean((noised - e) ** 2, axis=-1)) / rms
  assert abs(float(jnp.mean(relative)) - 0.3) < 0.01  # the same relative size at every norm
  assert float(jnp.std(relative)) < 0.05
  cos = jnp.sum(noised * e, -1) / jnp.linalg.norm(noised, axis=-1) / jnp.linalg.norm(e, axis=-1)
  assert abs(float(jnp.mean(cos)) - 1 / np.sqrt(1 + 0.3 ** 2)) < 0.01


def _loss(noise: float | None) -> float:
  config = config_loader.load_config_file("configs/decoder.py:tiny")
  if noise is None:
    del config.train["image_embedding_noise"]  # a config written before the field existed
  else:
    config.train.image_embedding_noise = noise
  config.train.clip_emb_drop = 0.0  # every example keeps its (noised) embedding
  stage = DecoderStage(config)
  params = stage.init_params(jax.random.key(0))
  fill = lambda s: jax.random.normal(jax.random.key(2), s.shape).astype(s.dtype)  # noqa: E731
  batch = {k: fill(s) for k, s in stage.batch_spec(4).items()}
  batch["text_mask"] = jnp.ones_like(batch["text_mask"], bool)
  extra = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), stage.abstract_extra())
  loss, _ = jax.jit(stage.loss)(params, extra, batch, jax.random.key(3))
  return float(loss)


def test_the_decoder_stage_trains_on_noised_embeddings_only_when_asked():
  clean = _loss(0.0)
  assert _loss(None) == clean  # off: the step's keys and numbers are those of a config without the field
  assert _loss(1.0) != clean  # on: the model saw other embeddings


def test_a_negative_noise_is_a_one_line_error():
  config = config_loader.load_config_file("configs/decoder.py:tiny")
  config.train.image_embedding_noise = -0.3
  with pytest.raises(UserError, match="image_embedding_noise is -0.3; use 0"):
    DecoderStage(config)
