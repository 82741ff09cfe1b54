"""CLIP modules: published parameter counts (shapes only), output contract, causality, config round trip."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unclip_jax.models import clip as clip_model
from unclip_jax.models.tokenizer import tokenize

# open_clip's models built with pretrained=None (tests/parity/test_clip_parity.py checks ViT-B/32 against it too).
PUBLISHED = {"ViT-B/32": 151_277_313, "ViT-B/16": 149_620_737, "ViT-L/14": 427_616_513}
TINY = clip_model.PRESETS["tiny"].replace(vision_layers=1, text_layers=1)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_counts_match_published_models(name):
  abstract = clip_model.abstract_params(clip_model.PRESETS[name])  # jax.eval_shape: nothing allocated
  assert all(isinstance(x, jax.ShapeDtypeStruct) and x.dtype == jnp.float32 for x in jax.tree.leaves(abstract))
  assert clip_model.count_params(abstract) == PUBLISHED[name]


def test_preset_lookup_accepts_open_clip_names():
  assert clip_model.get_preset("ViT-B-32") is clip_model.PRESETS["ViT-B/32"]
  assert clip_model.get_preset("vit_l14") is clip_model.PRESETS["ViT-L/14"]
  with pytest.raises(KeyError):
    clip_model.get_preset("RN50")


@pytest.fixture(scope="module")
def tiny():
  params = clip_model.init_params(TINY, jax.random.key(0))
  apply = jax.jit(lambda p, x, t: clip_model.CLIP(TINY).apply({"params": p}, x, t))
  return params, apply


def test_outputs_and_initial_temperature(tiny):
  params, apply = tiny
  images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  tokens = tokenize(["a red circle", "two blue squares"], TINY.context_length)
  out = apply(params, images, tokens)
  assert out["image_embeds"].shape == (2, TINY.embed_dim)
  assert out["text_embeds"].shape == (2, TINY.embed_dim)
  assert out["text_states"].shape == (2, TINY.context_length, TINY.text_width)
  assert float(out["logit_scale"]) == pytest.approx(math.log(1 / 0.07))
  assert "logit_bias" not in out
  # The pooled text embedding is the projected state at the end-of-text token (argmax of ids).
  eot = tokens.argmax(-1)
  pooled = out["text_states"][jnp.arange(2), eot] @ params["text_projection"]
  np.testing.assert_allclose(out["text_embeds"], pooled, rtol=1e-5, atol=1e-6)
  assert not np.allclose(out["image_embeds"][0], out["image_embeds"][1])


def test_text_tower_is_causal(tiny):
  params, apply = tiny
  images = jnp.zeros((2, 32, 32, 3))
  tokens = np.asarray(tokenize(["a red circle and a blue square", "a red circle or a green triangle"],
                               TINY.context_length))
  assert (tokens[0, :4] == tokens[1, :4]).all() and (tokens[0, 4] != tokens[1, 4])
  states = np.asarray(apply(params, images, tokens)["text_states"])
  np.testing.assert_allclose(states[0, :4], states[1, :4], rtol=1e-5, atol=1e-6)  # the past ignores the future
  assert np.abs(states[0, 4:] - states[1, 4:]).max() > 1e-3


def test_bfloat16_compute_and_siglip_bias():
  config = TINY.replace(dtype="bfloat16", init_logit_bias=-10.0, init_logit_scale=math.log(10.0))
  params = clip_model.init_params(config, jax.random.key(0))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))  # params stay float32
  out = jax.jit(clip_model.CLIP(config).apply)({"params": params}, *clip_model.dummy_inputs(config, 1))
  assert float(out["logit_bias"]) == -10.0 and float(out["logit_scale"]) == pytest.approx(math.log(10.0))
  assert out["image_embeds"].dtype == jnp.float32 and np.isfinite(np.asarray(out["text_states"])).all()


def test_config_round_trip_and_validation():
  for config in clip_model.PRESETS.values():
    assert clip_model.CLIPConfig.from_dict(config.to_dict()) == config
  with pytest.raises(ValueError, match="unknown"):
    clip_model.CLIPConfig.from_dict({"embed_dims": 3})
  with pytest.raises(ValueError, match="activation"):
    clip_model.CLIPConfig(activation="relu")
  with pytest.raises(ValueError, match="multiple"):
    clip_model.CLIPConfig(image_size=100)


def test_normalize_images():
  x = clip_model.normalize_images(np.full((1, 2, 2, 3), 255, np.uint8), TINY)
  np.testing.assert_allclose(np.asarray(x), 1.0)  # tiny uses mean 0.5 / std 0.5: [0, 255] → [-1, 1]
  y = clip_model.normalize_images(np.array([[[[-1.0, 0.0, 1.0]]]]), TINY, value_range=(-1, 1))
  np.testing.assert_allclose(np.asarray(y), [[[[-1.0, 0.0, 1.0]]]])
  z = clip_model.normalize_images(np.ones((1, 1, 1, 3)), clip_model.PRESETS["ViT-B/32"])
  np.testing.assert_allclose(np.asarray(z)[0, 0, 0], (1 - np.array(clip_model.OPENAI_MEAN)) / clip_model.OPENAI_STD,
                             rtol=1e-6)


@pytest.mark.parametrize("preset", ["tiny", "vit_b32", "vit_l14"])
def test_configs_file_presets_build_models(preset):
  path = Path(__file__).resolve().parents[2] / "configs" / "clip.py"
  spec = importlib.util.spec_from_file_location("configs_clip", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(preset)
  model_config = clip_model.CLIPConfig.from_dict(config.model.to_dict())
  assert config.train.loss in ("softmax", "sigmoid") and config.train.batch_size > 0
  assert config.data.image_size == model_config.image_size
  if preset == "vit_l14":
    assert clip_model.count_params(clip_model.abstract_params(model_config)) == PUBLISHED["ViT-L/14"]
  assert "python -m unclip_jax.train --config configs/clip.py:tiny" in module.__doc__
  with pytest.raises(ValueError):
    module.get_config("huge")
