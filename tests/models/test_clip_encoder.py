"""`unclip_jax.models.clip_encoder`: one text mask (numpy and traced), the encoders, the empty caption."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from unclip_jax.models import clip as clip_model
from unclip_jax.models import clip_encoder
from unclip_jax.models.tokenizer import Tokenizer

CONFIG = clip_model.PRESETS["tiny"].replace(vision_layers=1, text_layers=1)
BANG = "wow!$ a red circle"  # '!' before another punctuation byte stays the lone byte: BPE id 0


def _random_params(config, seed=0):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: rng.normal(0, 0.2, x.shape).astype(np.float32), clip_model.abstract_params(config))


def test_text_mask_counts_id_0_inside_a_caption_on_numpy_and_under_jit():
  tokenizer = Tokenizer(CONFIG.context_length)
  tokens = tokenizer([BANG, "", "a blue square"])
  n_real = [len(tokenizer.encode(t)) + 2 for t in (BANG, "", "a blue square")]
  assert 0 in tokens[0, 1:n_real[0] - 1]  # the caption really holds id 0 before its end token
  want = np.arange(CONFIG.context_length) < np.array(n_real)[:, None]  # a CLIP tokenizer's attention mask
  on_host = clip_encoder.text_mask(tokens)
  assert isinstance(on_host, np.ndarray) and on_host.dtype == bool
  np.testing.assert_array_equal(on_host, want)
  traced = jax.jit(clip_encoder.text_mask)(jnp.asarray(tokens))
  assert isinstance(traced, jax.Array)
  np.testing.assert_array_equal(np.asarray(traced), want)
  assert not np.array_equal(want, tokens != 0)  # the rule the mask replaces would drop the '!'
  np.testing.assert_array_equal(clip_encoder.text_mask(tokens[0]), want[0])  # one unbatched row


def test_text_and_image_encoders_are_the_clip_towers():
  params = _random_params(CONFIG)
  model = clip_model.CLIP(CONFIG)
  tokens = Tokenizer(CONFIG.context_length)([BANG, "a blue square"])
  embeds, states, mask = jax.jit(clip_encoder.text_encoder(model))(params, tokens)
  want_embeds, want_states = model.apply({"params": params}, tokens, method=model.encode_text)
  np.testing.assert_allclose(embeds, want_embeds, atol=1e-6)
  np.testing.assert_allclose(states, want_states, atol=1e-6)
  np.testing.assert_array_equal(mask, clip_encoder.text_mask(tokens))
  pixels = np.random.default_rng(1).integers(0, 256, (2, CONFIG.image_size, CONFIG.image_size, 3), dtype=np.uint8)
  encode = jax.jit(clip_encoder.image_encoder(model))
  want = model.apply({"params": params}, clip_model.normalize_images(pixels, CONFIG), method=model.encode_image)
  assert encode(params, pixels).shape == (2, CONFIG.embed_dim)
  np.testing.assert_allclose(encode(params, pixels), want, atol=1e-5)
  np.testing.assert_allclose(encode(params, pixels.astype(np.float32) / 255.0), want, atol=1e-5)
  odd = np.random.default_rng(2).integers(0, 256, (40, 50, 4), dtype=np.uint8)
  assert clip_encoder.clip_pixels(odd, CONFIG.image_size).shape == (CONFIG.image_size, CONFIG.image_size, 3)
  np.testing.assert_array_equal(clip_encoder.clip_pixels(pixels[0], CONFIG.image_size), pixels[0])


def test_empty_caption_and_its_encoding():
  tokenizer = Tokenizer(CONFIG.context_length)
  tokens = clip_encoder.empty_caption(CONFIG)
  assert tokens.dtype == np.int32 and tokens.shape == (1, CONFIG.context_length)
  assert tokens[0, :2].tolist() == [tokenizer.sot_id, tokenizer.eot_id] and not tokens[0, 2:].any()
  np.testing.assert_array_equal(clip_encoder.empty_caption(CONFIG.context_length, tokenizer), tokens)
  params = _random_params(CONFIG)
  model = clip_model.CLIP(CONFIG)
  embeds, states, mask = clip_encoder.encode_empty_caption(model, params, CONFIG.context_length)
  assert embeds.shape == (1, CONFIG.embed_dim) and states.shape == (1, CONFIG.context_length, CONFIG.text_width)
  assert mask.tolist() == [[True, True] + [False] * (CONFIG.context_length - 2)]
  want = clip_encoder.text_encoder(model)(params, tokens)
  np.testing.assert_allclose(embeds, want[0], atol=1e-6)
  np.testing.assert_allclose(states, want[1], atol=1e-6)


def test_the_model_level_module_imports_no_data_train_pipeline_or_cli_module():
  code = ("import sys, unclip_jax.models.clip_encoder as m; "
          "bad = [n for n in sys.modules if n.startswith(('unclip_jax.data', 'unclip_jax.train', "
          "'unclip_jax.pipeline', 'unclip_jax.zeroshot', 'unclip_jax.sample', 'unclip_jax.embed', "
          "'tensorflow'))]; print(bad); assert not bad")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stdout + proc.stderr
