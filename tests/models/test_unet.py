"""Decoder (UNet2DConditionModel + UnCLIPTextProjModel) and super-resolution (UNet2DModel) parity, bf16/remat."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import C, decoder_unet, sr_unet
from unclip_jax.convert.karlo import convert_state_dict
from unclip_jax.models.unet import Decoder, TextProj, UNet, init_decoder, init_unet

DEC_TORCH = decoder_unet(16)
SR_TORCH = sr_unet(16)


def decoder(**kw):
  return Decoder(unet=UNet(block_out_channels=C, layers_per_block=1, attention_levels=(False, True),
                           attention_head_dim=16, cross_attention_dim=48, norm_groups=8, **kw),
                 text_proj=TextProj(24, 4 * C[0], 48, dtype=kw.get("dtype", jnp.float32)))


def sr_unet(**kw):
  return UNet(in_channels=6, out_channels=3, block_out_channels=C, layers_per_block=1, attention_levels=(False, False),
              mid_attention=False, cross_attention_dim=None, scale_shift=False, norm_groups=8, **kw)


def random_params(abstract, seed=0, scale=0.1):
  """Random float32 parameters for the shapes in `abstract`, without compiling `init` (slow on CPU)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape) * scale, jnp.float32), abstract)


def _rel(a, b):
  return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


@pytest.mark.peers
def test_decoder_parity_with_diffusers():
  from tests.peers import require

  diffusers = require("diffusers")
  import torch
  from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel

  torch.manual_seed(0)
  tu = diffusers.UNet2DConditionModel(**DEC_TORCH).eval()
  tp = UnCLIPTextProjModel(clip_embeddings_dim=24, time_embed_dim=4 * C[0], cross_attention_dim=48).eval()
  with torch.no_grad():
    for m in (tu, tp):
      for p in m.parameters():
        p.normal_(0, 0.1)
  model = decoder()
  abstract = jax.eval_shape(lambda: init_decoder(model, jax.random.key(0), image_size=16, text_len=5))["params"]
  params = {"unet": convert_state_dict({k: v.numpy() for k, v in tu.state_dict().items()}, abstract["unet"]),
            "text_proj": convert_state_dict({k: v.numpy() for k, v in tp.state_dict().items()}, abstract["text_proj"])}
  f = jax.jit(lambda p, *a: model.apply({"params": p}, *a))
  rng = np.random.default_rng(0)
  for b, t in [(1, 3), (2, 999)]:
    x = rng.normal(size=(b, 3, 16, 16)).astype(np.float32)
    img, prompt = rng.normal(size=(2, b, 24)).astype(np.float32)
    hid = rng.normal(size=(b, 5, 24)).astype(np.float32)
    mask = np.ones((b, 5), bool)
    mask[:, 3:] = False
    cfg = b == 2  # diffusers' guided batch: the first half uses the learned CFG image embedding
    dropped = np.arange(b) < b // 2 if cfg else np.zeros(b, bool)
    with torch.no_grad():
      enc, added = tp(image_embeddings=torch.tensor(img[b // 2:] if cfg else img), prompt_embeds=torch.tensor(prompt),
                      text_encoder_hidden_states=torch.tensor(hid), do_classifier_free_guidance=cfg)
      dmask = torch.nn.functional.pad(torch.tensor(mask), (4, 0), value=True)
      ref = tu(torch.tensor(x), t, encoder_hidden_states=enc, class_labels=added, attention_mask=dmask).sample.numpy()
    out = f(params, jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.full((b,), t), img, prompt, hid, mask, dropped)
    assert _rel(np.asarray(out).transpose(0, 3, 1, 2), ref) <= 1e-4, (b, t)


@pytest.mark.peers
def test_super_resolution_parity_with_diffusers():
  from tests.peers import require

  diffusers = require("diffusers")
  import torch

  torch.manual_seed(0)
  tm = diffusers.UNet2DModel(**SR_TORCH).eval()
  with torch.no_grad():
    for p in tm.parameters():
      p.normal_(0, 0.1)
  model = sr_unet()
  abstract = jax.eval_shape(lambda: init_unet(model, jax.random.key(0), image_size=16))["params"]
  params = convert_state_dict({k: v.numpy() for k, v in tm.state_dict().items()}, abstract)
  f = jax.jit(lambda p, *a: model.apply({"params": p}, *a))
  rng = np.random.default_rng(1)
  for b, t in [(1, 0), (2, 640)]:
    x = rng.normal(size=(b, 6, 16, 16)).astype(np.float32)
    with torch.no_grad():
      ref = tm(torch.tensor(x), t).sample.numpy()
    out = np.asarray(f(params, jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.full((b,), t))).transpose(0, 3, 1, 2)
    assert _rel(out, ref) <= 1e-4, (b, t)


def test_decoder_bf16_and_remat_match_float32():
  def small(**kw):  # one level keeps bf16 compilation on CPU short
    return Decoder(unet=UNet(block_out_channels=(16,), layers_per_block=1, attention_levels=(True,),
                             attention_head_dim=8, cross_attention_dim=48, norm_groups=4, **kw),
                   text_proj=TextProj(24, 64, 48, dtype=kw.get("dtype", jnp.float32)))

  ref_model, model16 = small(), small(dtype=jnp.bfloat16)
  abstract = jax.eval_shape(lambda: init_decoder(model16, jax.random.key(0), image_size=16, text_len=5))
  assert all(l.dtype == jnp.float32 for l in jax.tree.leaves(abstract))
  params = random_params(abstract["params"])
  rng = np.random.default_rng(0)
  args = (rng.normal(size=(2, 16, 16, 3)).astype(np.float32), jnp.array([1, 900]),
          *rng.normal(size=(2, 2, 24)).astype(np.float32), rng.normal(size=(2, 5, 24)).astype(np.float32))
  ref = jax.jit(lambda p: ref_model.apply({"params": p}, *args))(params)
  remat = jax.jit(lambda p: small(remat=True).apply({"params": p}, *args))(params)  # attention under remat too
  np.testing.assert_allclose(remat, ref, rtol=1e-5, atol=1e-5)
  out = jax.jit(lambda p: model16.apply({"params": p}, *args))(params)
  assert out.shape == (2, 16, 16, 6) and out.dtype == jnp.float32
  assert np.isfinite(np.asarray(out)).all()
  assert _rel(out, ref) < 5e-2


def test_super_resolution_remat_gradients_match():
  small = dict(in_channels=6, out_channels=3, block_out_channels=(16,), layers_per_block=1, attention_levels=(False,),
               mid_attention=False, cross_attention_dim=None, norm_groups=4)
  model, model_remat = UNet(**small), UNet(**small, remat=True)
  params = random_params(jax.eval_shape(lambda: init_unet(model, jax.random.key(0), image_size=8))["params"])
  x = jax.random.normal(jax.random.key(2), (1, 8, 8, 6))

  def loss(m):
    return lambda p: jnp.mean(m.apply({"params": p}, x, jnp.array([7])) ** 2)

  g1 = jax.jit(jax.grad(loss(model)))(params)
  g2 = jax.jit(jax.grad(loss(model_remat)))(params)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert float(jnp.abs(g1["conv_in"]["kernel"]).max()) > 0


@pytest.mark.parametrize("shape", [(2, 8, 8, 32), (3, 20, 16)])  # a feature map, and the attention's (B, L, C)
def test_group_norm_matches_flax_and_folds_the_film(shape):
  import flax.linen as nn

  from unclip_jax.models.unet import GroupNorm

  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(2.0, 3.0, size=shape), jnp.float32)  # an offset mean, as activations have
  c = shape[-1]
  ours, ref = GroupNorm(num_groups=8, epsilon=1e-5), nn.GroupNorm(num_groups=8, epsilon=1e-5)
  params = {"params": {"scale": jnp.asarray(rng.normal(size=c), jnp.float32),
                       "bias": jnp.asarray(rng.normal(size=c), jnp.float32)}}
  assert jax.tree.map(jnp.shape, ours.init(jax.random.key(0), x)) == jax.tree.map(jnp.shape, ref.init(
      jax.random.key(0), x))  # the same parameter names and shapes: checkpoints and converters stay valid
  want = ref.apply(params, x)
  np.testing.assert_allclose(ours.apply(params, x), want, atol=2e-5, rtol=2e-5)
  scale, shift = (jnp.asarray(rng.normal(size=(shape[0], c)), jnp.float32) for _ in range(2))
  ex = (slice(None),) + (None,) * (len(shape) - 2) + (slice(None),)
  np.testing.assert_allclose(ours.apply(params, x, film=(scale, shift)), want * (1 + scale[ex]) + shift[ex],
                             atol=2e-5, rtol=2e-5)
  with pytest.raises(ValueError, match="groups"):
    GroupNorm(num_groups=5).init(jax.random.key(0), x)
