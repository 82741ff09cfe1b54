"""A bfloat16 model computes in bfloat16: every convolution and matmul of its forward pass takes bfloat16
operands (the attention scores too: they are accumulated and returned in float32, not computed from
float32 copies). A float32 operand slipping in (a numpy scalar or a float32 constant promoting the
activations) would run that op in float32, on a GPU at TF32's half of the bf16 rate, and nothing else
would fail."""

from __future__ import annotations

import jax
import pytest

from unclip_jax.models import clip as clip_model
from unclip_jax.models import prior as prior_model
from unclip_jax.models import registry
from unclip_jax.models import unet as unet_model
from unclip_jax.models.presets import model_config


def _products(jaxpr):
  """Every convolution and dot_general in `jaxpr`, nested jaxprs included."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in ("conv_general_dilated", "dot_general"):
      yield eqn
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else [param]:
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          yield from _products(sub.jaxpr)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          yield from _products(sub)


def _forward(kind: str):
  """The jaxpr of the tiny `kind` model's forward pass (its init) with bfloat16 compute."""
  m = model_config(kind, "tiny").to_dict()
  m["dtype"] = "bfloat16"
  key = jax.random.key(0)
  if kind == "clip":
    config = clip_model.CLIPConfig.from_dict(m)
    return jax.make_jaxpr(lambda k: clip_model.init_params(config, k))(key)
  module = registry.build_model(kind, m, remat=False)
  if kind == "prior":
    return jax.make_jaxpr(lambda k: prior_model.init_variables(module, k, batch=2))(key)
  if kind == "decoder":
    return jax.make_jaxpr(lambda k: unet_model.init_decoder(module, k, image_size=int(m["image_size"]),
                                                            text_len=4, batch=2))(key)
  return jax.make_jaxpr(lambda k: unet_model.init_unet(module, k, image_size=int(m["image_size"]), batch=2))(key)


@pytest.mark.parametrize("kind", ["clip", "prior", "decoder", "upsampler"])
def test_a_bfloat16_model_computes_in_bfloat16(kind):
  products = list(_products(_forward(kind).jaxpr))
  assert products
  for eqn in products:
    dtypes = {str(v.aval.dtype) for v in eqn.invars}
    assert dtypes == {"bfloat16"}, (kind, eqn.primitive.name, [v.aval.shape for v in eqn.invars], dtypes)


def test_a_bfloat16_clip_embedder_holds_its_kernels_in_bfloat16_and_embeds_as_with_float32_kernels():
  import numpy as np

  from unclip_jax.models.clip_encoder import ClipEmbedder

  config = clip_model.CLIPConfig.from_dict(dict(model_config("clip", "tiny").to_dict(), dtype="bfloat16"))
  params = jax.tree.map(np.asarray, clip_model.init_params(config, jax.random.key(0)))
  embedder = ClipEmbedder(config, params, 2)
  leaves = jax.tree_util.tree_flatten_with_path(embedder._params)[0]  # noqa: SLF001
  assert {str(x.dtype) for p, x in leaves if p[-1].key == "kernel"} == {"bfloat16"}
  assert {str(x.dtype) for p, x in leaves if p[-1].key != "kernel"} == {"float32"}
  reference = ClipEmbedder(config, params, 2)
  reference._params = params  # noqa: SLF001 - the float32 kernels, cast by the layers instead
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (2, config.image_size, config.image_size, 3), dtype=np.uint8)
  tokens = rng.integers(1, 100, (2, config.context_length), dtype=np.int32)
  a, b = embedder(pixels, tokens), reference(pixels, tokens)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
