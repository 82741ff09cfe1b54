"""One classifier-free-guided prior step and one decoder step equal diffusers' UnCLIPPipeline loop body.

The pipeline's loop body (pipeline_unclip.py) is reproduced line for line on tiny random-weight diffusers
models with UnCLIPScheduler configured as the Karlo conversion script does; our side uses
`unclip_jax.diffusion` (respaced cosine process, `guided_model_fn`, `ddpm_step`) on the converted weights,
with the same x_T and the same step noise. diffusers clamps the prior's x0 to ±5 (`clip_sample_range=5.0`),
Karlo to ±10 (our `prior` config); the test uses diffusers' value.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import C, decoder_unet
from unclip_jax import diffusion
from unclip_jax.convert.karlo import convert_state_dict
from unclip_jax.models.prior import PriorTransformer, init_variables
from unclip_jax.models.unet import Decoder, TextProj, UNet, init_decoder

pytestmark = pytest.mark.peers

D, N = 12, 5  # CLIP embedding width and text length
STEP = 12  # sampling step i of 25 (t = 500), where the network output dominates the update


def _rel(a, b):
  return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


def _setup():
  from tests.peers import require

  diffusers = require("diffusers")
  import torch

  torch.manual_seed(0)
  return diffusers, torch


def _randomise(torch, *modules):
  with torch.no_grad():
    for m in modules:
      m.eval()
      for p in m.parameters():
        p.normal_(0, 0.1)


def test_guided_prior_step_matches_pipeline():
  diffusers, torch = _setup()
  cfg = dict(num_attention_heads=2, attention_head_dim=8, num_layers=2, embedding_dim=D, num_embeddings=N)
  tm = diffusers.PriorTransformer(**cfg)
  _randomise(torch, tm)
  scheduler = diffusers.UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample",
                                        num_train_timesteps=1000, clip_sample_range=5.0)
  scheduler.set_timesteps(25)
  rng = np.random.default_rng(0)
  b, scale = 2, 4.0
  text_emb, uncond_emb = rng.normal(size=(2, b, D)).astype(np.float32)
  text_hid, uncond_hid = rng.normal(size=(2, b, N, D)).astype(np.float32)
  text_mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
  uncond_mask = np.array([[1, 1, 0, 0, 0]] * b, bool)
  latents = rng.normal(size=(b, D)).astype(np.float32)

  # diffusers: pipeline_unclip.py prior loop body, i = 0
  t, prev = scheduler.timesteps[STEP], scheduler.timesteps[STEP + 1]
  gen = torch.Generator().manual_seed(7)
  noise = torch.randn((b, D), generator=torch.Generator().manual_seed(7))
  with torch.no_grad():
    lat = torch.tensor(latents)
    pred = tm(torch.cat([lat] * 2), timestep=t, proj_embedding=torch.tensor(np.concatenate([uncond_emb, text_emb])),
              encoder_hidden_states=torch.tensor(np.concatenate([uncond_hid, text_hid])),
              attention_mask=torch.tensor(np.concatenate([uncond_mask, text_mask]))).predicted_image_embedding
    pred_uncond, pred_text = pred.chunk(2)
    pred = pred_uncond + scale * (pred_text - pred_uncond)
    ref = scheduler.step(pred, timestep=t, sample=lat, generator=gen, prev_timestep=prev).prev_sample.numpy()

  model = PriorTransformer(**cfg)
  abstract = jax.eval_shape(lambda: init_variables(model, jax.random.key(0)))
  variables = convert_state_dict({k: v.numpy() for k, v in tm.state_dict().items()}, abstract)
  process = diffusion.GaussianDiffusion.from_config(diffusion.diffusion_config("prior", "karlo")).respace("25")
  index = process.num_timesteps - 1 - STEP
  assert int(process.model_timesteps(index)) == int(t)  # ADM "25" respacing == UnCLIPScheduler's 25 steps

  def model_fn(x, ts, cond):
    return model.apply(variables, x, ts, *cond)

  guided = diffusion.guided_model_fn(model_fn, (text_emb, text_hid, text_mask), (uncond_emb, uncond_hid, uncond_mask),
                                     scale)
  x = jnp.asarray(latents)
  idx = jnp.full((b,), index)
  denoise = diffusion.make_x0_denoiser(clip=5.0)
  out, _ = diffusion.ddpm_step(process, guided(x, process.model_timesteps(idx)), x, idx, jnp.asarray(noise.numpy()),
                               denoise_x0=denoise)
  assert _rel(out, ref) <= 1e-4
  no_model, _ = diffusion.ddpm_step(process, jnp.zeros_like(x), x, idx, jnp.asarray(noise.numpy()))
  assert _rel(no_model, ref) > 1e-3  # the network output matters at this step (measured 1e-2)


def test_guided_decoder_step_matches_pipeline():
  diffusers, torch = _setup()
  from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel

  tu = diffusers.UNet2DConditionModel(**decoder_unet(16))
  tp = UnCLIPTextProjModel(clip_embeddings_dim=D, time_embed_dim=4 * C[0], cross_attention_dim=48)
  _randomise(torch, tu, tp)
  scheduler = diffusers.UnCLIPScheduler(variance_type="learned_range", prediction_type="epsilon",
                                        num_train_timesteps=1000)
  scheduler.set_timesteps(25)
  rng = np.random.default_rng(1)
  b, scale = 1, 8.0
  image_emb = rng.normal(size=(b, D)).astype(np.float32)
  text_emb, uncond_emb = rng.normal(size=(2, b, D)).astype(np.float32)
  text_hid, uncond_hid = rng.normal(size=(2, b, N, D)).astype(np.float32)
  text_mask, uncond_mask = np.array([[1, 1, 1, 0, 0]], bool), np.array([[1, 1, 0, 0, 0]], bool)
  latents = rng.normal(size=(b, 3, 16, 16)).astype(np.float32)

  # diffusers: pipeline_unclip.py text_proj + decoder loop body, i = 0
  t, prev = scheduler.timesteps[STEP], scheduler.timesteps[STEP + 1]
  gen = torch.Generator().manual_seed(3)
  noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(3))
  with torch.no_grad():
    enc, added = tp(image_embeddings=torch.tensor(image_emb),
                    prompt_embeds=torch.tensor(np.concatenate([uncond_emb, text_emb])),
                    text_encoder_hidden_states=torch.tensor(np.concatenate([uncond_hid, text_hid])),
                    do_classifier_free_guidance=True)
    mask = torch.nn.functional.pad(torch.tensor(np.concatenate([uncond_mask, text_mask])), (4, 0), value=True)
    lat = torch.tensor(latents)
    pred = tu(torch.cat([lat] * 2), timestep=t, encoder_hidden_states=enc, class_labels=added,
              attention_mask=mask).sample
    pred_uncond, pred_text = pred.chunk(2)
    pred_uncond, _ = pred_uncond.split(3, dim=1)
    pred_text, variance = pred_text.split(3, dim=1)
    pred = torch.cat([pred_uncond + scale * (pred_text - pred_uncond), variance], dim=1)
    ref = scheduler.step(pred, t, lat, prev_timestep=prev, generator=gen).prev_sample.numpy()

  model = Decoder(unet=UNet(block_out_channels=C, layers_per_block=1, attention_levels=(False, True),
                            attention_head_dim=16, cross_attention_dim=48, norm_groups=8),
                  text_proj=TextProj(D, 4 * C[0], 48))
  abstract = jax.eval_shape(lambda: init_decoder(model, jax.random.key(0), image_size=16, text_len=N))["params"]
  params = {"unet": convert_state_dict({k: v.numpy() for k, v in tu.state_dict().items()}, abstract["unet"]),
            "text_proj": convert_state_dict({k: v.numpy() for k, v in tp.state_dict().items()}, abstract["text_proj"])}
  process = diffusion.GaussianDiffusion.from_config(diffusion.diffusion_config("decoder", "karlo")).respace("25")
  index = process.num_timesteps - 1 - STEP

  def model_fn(x, ts, cond):
    return model.apply({"params": params}, x, ts, image_emb_both, *cond)

  image_emb_both = np.concatenate([image_emb, image_emb])
  cond = (text_emb, text_hid, text_mask, np.zeros(b, bool))
  uncond = (uncond_emb, uncond_hid, uncond_mask, np.ones(b, bool))  # learned CFG image embedding
  guided = diffusion.guided_model_fn(model_fn, cond, uncond, scale, guided_channels=3)
  x = jnp.asarray(latents.transpose(0, 2, 3, 1))
  idx = jnp.full((b,), index)
  out, _ = diffusion.ddpm_step(process, guided(x, process.model_timesteps(idx)), x, idx,
                               jnp.asarray(noise.numpy().transpose(0, 2, 3, 1)),
                               denoise_x0=diffusion.make_x0_denoiser(clip=1.0))
  assert _rel(np.asarray(out).transpose(0, 3, 1, 2), ref) <= 1e-4
  no_model, _ = diffusion.ddpm_step(process, jnp.zeros(x.shape[:-1] + (6,)), x, idx,
                                    jnp.asarray(noise.numpy().transpose(0, 2, 3, 1)))
  assert _rel(np.asarray(no_model).transpose(0, 3, 1, 2), ref) > 1e-2  # the network output matters
