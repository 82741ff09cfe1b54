"""The diffusion sub-config every stage carries as `config.diffusion`, with the published presets.

A stage config (`configs/prior.py`, `configs/decoder.py`, `configs/upsampler.py`) does
`config.diffusion = diffusion_config("decoder")` and may override fields. The fields:

  timesteps       training steps T (1000 everywhere in unCLIP)
  schedule        beta schedule name (see `schedules.SCHEDULES`)
  prediction      what the network predicts: "eps", "x0" or "v"
  variance        "fixed_small", "fixed_large" or "learned_range" (the network also outputs v in [-1, 1])
  loss            "mse" (L_simple) or "hybrid" (L_simple + L_vlb with a stop-gradient on the mean)
  timestep_sampler  "uniform" or "loss_second_moment" (importance sampling, improved DDPM)
  sample.steps    respacing string: "25", "ddim50", "10,10,5", "fast27"
  sample.sampler  "ddpm" (ancestral) or "ddim"
  sample.eta      DDIM eta (0 = deterministic)
  sample.guidance_scale  classifier-free guidance scale (1 = conditional model only)
  sample.clip_x0  clip predicted x0 to [-clip_x0, clip_x0]; 0 turns clipping off
  sample.dynamic_threshold  Imagen's percentile (e.g. 0.995); 0 turns it off (then clip_x0 applies)

Sources for the numbers: the unCLIP paper's Table 3 / Appendix C ("paper") and Kakao Brain's Karlo
configs ("karlo").
"""

from __future__ import annotations

import ml_collections

STAGES = ("prior", "decoder", "sr_64_256", "sr_256_1024")

# stage -> (schedule, prediction, variance, loss), identical for the karlo and paper presets
_TRAINING = {
    "prior": ("cosine", "x0", "fixed_small", "mse"),
    "decoder": ("cosine", "eps", "learned_range", "hybrid"),
    "sr_64_256": ("cosine", "eps", "fixed_small", "mse"),
    "sr_256_1024": ("linear", "eps", "fixed_small", "mse"),
}

# (stage, flavour) -> (steps, sampler, guidance_scale, clip_x0)
_SAMPLING = {
    # Karlo samples the prior and decoder with ancestral respaced steps, guided 4 and 8; it clamps the
    # prior's x0 to [-10, 10] in its standardised embedding space.
    ("prior", "karlo"): ("25", "ddpm", 4.0, 10.0),
    ("decoder", "karlo"): ("25", "ddpm", 8.0, 1.0),
    ("sr_64_256", "karlo"): ("7", "ddpm", 1.0, 1.0),
    ("sr_256_1024", "karlo"): ("ddim15", "ddim", 1.0, 1.0),
    # The paper: prior 64 steps (unguided, §5.5), decoder 250 strided steps guided 1.25 (Table 2),
    # upsamplers DDIM 27 and 15 steps, no guidance.
    ("prior", "paper"): ("64", "ddpm", 1.0, 10.0),
    ("decoder", "paper"): ("250", "ddpm", 1.25, 1.0),
    ("sr_64_256", "paper"): ("ddim27", "ddim", 1.0, 1.0),
    ("sr_256_1024", "paper"): ("ddim15", "ddim", 1.0, 1.0),
}


def diffusion_config(stage: str, flavour: str = "karlo") -> ml_collections.ConfigDict:
  """The diffusion sub-config of `stage` ("prior", "decoder", "sr_64_256", "sr_256_1024").

  `flavour` picks the sampling defaults: "karlo" (the released Karlo models) or "paper".
  """
  if stage not in STAGES:
    raise ValueError(f"unknown diffusion stage {stage!r}; expected one of {', '.join(STAGES)}")
  if flavour not in ("karlo", "paper"):
    raise ValueError(f"unknown diffusion preset flavour {flavour!r}; expected 'karlo' or 'paper'")
  schedule, prediction, variance, loss = _TRAINING[stage]
  steps, sampler, guidance, clip_x0 = _SAMPLING[(stage, flavour)]
  c = ml_collections.ConfigDict()
  c.timesteps = 1000
  c.schedule = schedule
  c.prediction = prediction
  c.variance = variance
  c.loss = loss
  c.timestep_sampler = "uniform"
  c.sample = ml_collections.ConfigDict()
  c.sample.steps = steps
  c.sample.sampler = sampler
  c.sample.eta = 0.0
  c.sample.guidance_scale = guidance
  c.sample.clip_x0 = clip_x0
  c.sample.dynamic_threshold = 0.0
  return c
