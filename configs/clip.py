"""CLIP training configs: presets `tiny` (CPU tests, toy shapes data), `vit_b32`, `vit_l14` (Karlo's CLIP).

Run (the training CLI arrives in a later issue):

    python -m unclip_jax.train --config configs/clip.py:tiny --workdir /tmp/clip_tiny

`config.model` holds exactly the fields of `unclip_jax.models.clip.CLIPConfig`, so it is what a stage
checkpoint's `stage.json` stores; `config.train` follows OpenCLIP's recipe (AdamW, cosine schedule with
warmup, wd 0.2, betas (0.9, 0.98), eps 1e-6, logit scale clamped at ln 100), with `loss` 'softmax' (CLIP)
or 'sigmoid' (SigLIP, which also needs `model.init_logit_bias`).
"""

from __future__ import annotations

import math

import ml_collections

from unclip_jax.models.clip import PRESETS
from unclip_jax.train.optim import optim_config

_MODEL = {"tiny": "tiny", "vit_b32": "ViT-B/32", "vit_l14": "ViT-L/14"}


def _model(name: str) -> ml_collections.ConfigDict:
  fields = PRESETS[_MODEL[name]].to_dict()
  fields["image_mean"], fields["image_std"] = tuple(fields["image_mean"]), tuple(fields["image_std"])
  bias = fields.pop("init_logit_bias")
  model = ml_collections.ConfigDict(fields)
  # A placeholder keeps the field typed (float) while it is None, so `--config.model.init_logit_bias=-10` works.
  model.init_logit_bias = ml_collections.config_dict.placeholder(float) if bias is None else bias
  return model


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  name = arg or "tiny"
  if name not in _MODEL:
    raise ValueError(f"unknown CLIP preset {name!r}; choose one of {', '.join(_MODEL)}")
  config = ml_collections.ConfigDict()
  config.preset = name
  config.stage = "clip"
  config.seed = 0
  config.model = _model(name)

  # OpenCLIP's recipe; no EMA (neither OpenCLIP nor big_vision keeps one for CLIP).
  config.optim = optim_config(lr=5e-4, warmup_steps=10_000, weight_decay=0.2, b2=0.98, eps=1e-6, ema_decay=0.0)
  train = ml_collections.ConfigDict()
  train.loss = "softmax"  # 'softmax' (CLIP InfoNCE) | 'sigmoid' (SigLIP)
  train.batch_size = 32768  # global batch, split over all devices
  train.steps = 100_000
  train.max_logit_scale = math.log(100.0)
  train.log_every = 100
  train.checkpoint_every = 5_000
  config.train = train

  data = ml_collections.ConfigDict()
  data.name = "image_text"  # the user's own image + caption folders or webdataset shards (data issue)
  data.image_size = config.model.image_size
  config.data = data

  if name == "tiny":
    data.name = "shapes"  # unclip_jax.data.shapes, 32x32 procedural captioned scenes
    train.batch_size = 64
    train.steps = 300
    config.optim.update(dict(lr=3e-3, warmup_steps=20, weight_decay=0.0))
    train.log_every = 50
    train.checkpoint_every = 100
  elif name == "vit_l14":
    config.optim.update(dict(lr=4e-4, warmup_steps=2_000))
  return config
