"""One module per training stage. A stage knows its model, its data and its per-device loss; the loop
(`unclip_jax.train.loop`) is shared. `get_stage(config)` picks the stage named by `config.stage`."""

from __future__ import annotations

import importlib

from unclip_jax.errors import UserError

STAGES = {
    "clip": "unclip_jax.train.stages.clip:ClipStage",
    "prior": "unclip_jax.train.stages.prior:PriorStage",
    "decoder": "unclip_jax.train.stages.decoder:DecoderStage",
    "sr_64_256": "unclip_jax.train.stages.upsampler:UpsamplerStage",
    "sr_256_1024": "unclip_jax.train.stages.upsampler:UpsamplerStage",
}


def get_stage(config):
  name = config.get("stage")
  if name not in STAGES:
    raise UserError(f"config.stage is {name!r}; expected one of: {', '.join(STAGES)}")
  module, _, cls = STAGES[name].partition(":")
  return getattr(importlib.import_module(module), cls)(config)
