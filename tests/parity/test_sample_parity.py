"""The pipeline's stages equal diffusers' UnCLIPPipeline, whole loops, on tiny random Karlo-layout models.

The torch models are converted with the Karlo converter; diffusers is fed our x_T and our per-step noise
(`randn_tensor` in its scheduler is replaced by a queue of our normals), so the results must agree to
float32 rounding: the full prior (25 guided steps) → decoder (25 guided steps) → super-resolution
(7 steps, the last with super_res_last) chain, and the super-resolution loop alone (bicubic antialiased
upsampling, [latents, upsampled] concatenation, fixed_small_log variance).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from tests.helpers import C, PRIOR, decoder_unet, drawn_noise, sr_unet
from unclip_jax import diffusion as D
from unclip_jax import pipeline as P
from unclip_jax.convert.karlo import convert_state_dict, upsampler_model_config
from unclip_jax.models import unet as unet_lib

pytestmark = pytest.mark.peers

SR = sr_unet(32)


def test_prior_decoder_upsampler_match_diffusers_unclip_pipeline(monkeypatch):
  """diffusers' UnCLIPPipeline.__call__ end to end (text encodings given) vs our prior → decoder → SR stages.

  Both sides get the same caption / empty-caption encodings, the same x_T per stage and the same step
  noise; diffusers' prior clamps x0 to ±5 (its conversion), so our prior does too here.
  """
  from tests.peers import require

  diffusers = require("diffusers")
  import diffusers.schedulers.scheduling_unclip as sched_mod
  import torch
  from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel

  from unclip_jax.models.prior import PriorTransformer, init_variables

  d, n, c = PRIOR["embedding_dim"], PRIOR["num_embeddings"], C
  torch.manual_seed(0)
  prior_cfg = PRIOR
  tprior = diffusers.PriorTransformer(**prior_cfg)
  tdec = diffusers.UNet2DConditionModel(**decoder_unet(8))
  tproj = UnCLIPTextProjModel(clip_embeddings_dim=d, time_embed_dim=4 * c[0], cross_attention_dim=48)
  first, last = diffusers.UNet2DModel(**SR), diffusers.UNet2DModel(**SR)
  with torch.no_grad():
    for m in (tprior, tdec, tproj, first, last):
      m.eval()
      for p in m.parameters():
        p.normal_(0, 0.05)
    tprior.clip_std.abs_().add_(0.5)
  pipe_t = diffusers.UnCLIPPipeline(
      prior=tprior, decoder=tdec, text_encoder=None, tokenizer=None, text_proj=tproj, super_res_first=first,
      super_res_last=last,
      prior_scheduler=diffusers.UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample",
                                                num_train_timesteps=1000, clip_sample_range=5.0),
      decoder_scheduler=diffusers.UnCLIPScheduler(variance_type="learned_range", prediction_type="epsilon",
                                                  num_train_timesteps=1000),
      super_res_scheduler=diffusers.UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="epsilon",
                                                    num_train_timesteps=1000))

  # our side: the same weights in our modules, stages driven directly with the same encodings
  ours = P.Pipeline.random("tiny", log=lambda msg: None)
  ours.prior = PriorTransformer(**prior_cfg)
  abstract = jax.eval_shape(lambda: init_variables(ours.prior, jax.random.key(0)))
  ours.prior_vars = convert_state_dict({k: v.numpy() for k, v in tprior.state_dict().items()}, abstract)
  ours.decoder = unet_lib.Decoder(
      unet=unet_lib.UNet(block_out_channels=c, layers_per_block=1, attention_levels=(False, True),
                         attention_head_dim=16, cross_attention_dim=48, norm_groups=8),
      text_proj=unet_lib.TextProj(d, 4 * c[0], 48))
  abstract = jax.eval_shape(lambda: unet_lib.init_decoder(ours.decoder, jax.random.key(0), image_size=8,
                                                          text_len=n))["params"]
  ours.decoder_params = {
      "unet": convert_state_dict({k: v.numpy() for k, v in tdec.state_dict().items()}, abstract["unet"]),
      "text_proj": convert_state_dict({k: v.numpy() for k, v in tproj.state_dict().items()}, abstract["text_proj"])}
  ours.image_size = 8
  m = upsampler_model_config(dict(first.config), "super_res_first")
  sr_model = unet_lib.unet_from_config(m, decoder=False)
  abstract = jax.eval_shape(lambda: unet_lib.init_unet(sr_model, jax.random.key(0), image_size=2))["params"]
  ours.srs = [P.SRStage("sr_64_256", sr_model, *[convert_state_dict({k: v.numpy() for k, v in t.state_dict().items()},
                                                                    abstract) for t in (first, last)], 8, 32)]

  rng = np.random.default_rng(0)
  b = 2
  text = P.TextEncoding(rng.normal(size=(b, d)).astype(np.float32), rng.normal(size=(b, n, d)).astype(np.float32),
                        np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool))
  ours._uncond = P.TextEncoding(rng.normal(size=(1, d)).astype(np.float32),
                                rng.normal(size=(1, n, d)).astype(np.float32), np.array([[1, 1, 0, 0, 0]], bool))
  u = ours.uncond(b)
  keys = P.image_keys([3, 4])
  settings = {"prior": P.StageSampling("25", "ddpm", 0.0, 4.0, 5.0), "decoder": P.StageSampling("25", "ddpm", 0.0, 8.0),
              "sr_64_256": P.StageSampling("7", "ddpm", 0.0, 1.0, 1.0)}
  emb = ours.sample_prior(text, keys, settings["prior"])
  small = ours.decode(emb, text, keys, settings["decoder"])
  big = ours.upsample(small, keys, settings)

  nchw = lambda a: torch.tensor(a.transpose(0, 3, 1, 2))  # noqa: E731
  prior_x, prior_steps = drawn_noise(keys, P.PRIOR_KEY, 25, (d,))
  _, dec_steps = drawn_noise(keys, P.DECODER_KEY, 25, (8, 8, 3))
  sr_x, sr_steps = drawn_noise(keys, P.SR_KEY, 7, (32, 32, 3))
  queues = {d: [torch.tensor(a) for a in prior_steps], 8: [nchw(a) for a in dec_steps],
            32: [nchw(a) for a in sr_steps]}
  monkeypatch.setattr(sched_mod, "randn_tensor", lambda shape, **k: queues[shape[-1]].pop(0))
  encoded = (torch.tensor(np.concatenate([u.embeds, text.embeds])), torch.tensor(np.concatenate([u.states, text.states])),
             torch.tensor(np.concatenate([u.mask, text.mask])))
  monkeypatch.setattr(pipe_t, "_encode_prompt", lambda *a, **k: encoded)
  with torch.no_grad():
    ref = pipe_t(prompt=["x"] * b, prior_latents=torch.tensor(prior_x),
                 decoder_latents=nchw(ours.decoder_noise(keys)), super_res_latents=nchw(sr_x), output_type="np").images
  got = (np.asarray(big) + 1) / 2
  assert ref.shape == got.shape == (b, 32, 32, 3)
  err = np.abs(got - ref).max()
  assert err <= 2e-3, err
  assert np.abs(got[0] - got[1]).max() > 0.05  # the two captions / seeds give different images


def test_upsampler_stage_matches_diffusers_super_res_loop(monkeypatch):
  from tests.peers import require

  diffusers = require("diffusers")
  import diffusers.schedulers.scheduling_unclip as sched_mod
  import torch

  torch.manual_seed(0)
  first, last = diffusers.UNet2DModel(**SR), diffusers.UNet2DModel(**SR)
  with torch.no_grad():
    for m in (first, last):
      m.eval()
      for p in m.parameters():
        p.normal_(0, 0.05)
    last.conv_out.bias.add_(30.0)  # at t = 0, eps moves x0 only by sqrt(1 - ᾱ_0)·eps: make the last model visible

  m = upsampler_model_config(dict(first.config), "super_res_first")
  model = unet_lib.unet_from_config(m, decoder=False)
  abstract = jax.eval_shape(lambda: unet_lib.init_unet(model, jax.random.key(0), image_size=2))["params"]
  params = [convert_state_dict({k: v.numpy() for k, v in t.state_dict().items()}, abstract) for t in (first, last)]

  pipe = P.Pipeline.random("tiny", log=lambda msg: None)
  pipe.srs = [P.SRStage("sr_64_256", model, params[0], params[1], 8, 32)]
  settings = {"sr_64_256": P.StageSampling(steps="7", sampler="ddpm", clip_x0=1.0)}
  low = np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32)
  keys = P.image_keys([11, 12])
  ours = pipe.upsample(low, keys, settings)

  # our noise, regenerated: x_T and one normal per step from the image's SR key
  process = D.GaussianDiffusion.from_config(D.diffusion_config("sr_64_256")).respace("7")
  x_T, step_noise = drawn_noise(keys, P.SR_KEY, process.num_timesteps, (32, 32, 3))
  noise_iter = iter(torch.tensor(n.transpose(0, 3, 1, 2)) for n in step_noise)
  monkeypatch.setattr(sched_mod, "randn_tensor", lambda *a, **k: next(noise_iter))

  scheduler = diffusers.UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="epsilon",
                                        num_train_timesteps=1000)
  scheduler.set_timesteps(7)
  assert sorted(int(t) for t in scheduler.timesteps) == [int(t) for t in process.timestep_map]
  with torch.no_grad():
    latents = torch.tensor(x_T.transpose(0, 3, 1, 2))
    small = torch.tensor(low.transpose(0, 3, 1, 2))
    up = torch.nn.functional.interpolate(small, size=[32, 32], mode="bicubic", align_corners=False, antialias=True)
    ts = scheduler.timesteps
    for i, t in enumerate(ts):
      unet = last if i == len(ts) - 1 else first
      pred = unet(sample=torch.cat([latents, up], dim=1), timestep=t).sample
      prev = None if i + 1 == len(ts) else ts[i + 1]
      latents = scheduler.step(pred, t, latents, prev_timestep=prev).prev_sample
  ref = latents.clamp(-1, 1).numpy().transpose(0, 2, 3, 1)
  err = np.abs(ours - ref).max()
  assert err <= 1e-3 * np.abs(ref).max(), err

  # with super_res_first on the last step too, the result moves far more than the parity error
  pipe.srs = [P.SRStage("sr_64_256", model, params[0], None, 8, 32)]
  moved = np.abs(pipe.upsample(low, keys, settings) - ref).max()
  assert moved > 50 * err, (moved, err)
