"""One place that turns (kind, model config) into a linen module and its abstract parameter tree.

The pipeline, the converters and the trainers all build models through here, so a stage.json `model`
dict always means the same module. Kinds are the stage checkpoint kinds: "clip", "prior", "decoder",
"upsampler". For "clip" the model config is the `CLIPConfig` dict; for the others, the stage config's
`model` sub-config (see `unclip_jax.models.presets`).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax

from unclip_jax.models import clip as clip_model
from unclip_jax.models import prior as prior_model
from unclip_jax.models import unet as unet_model

KINDS = ("clip", "prior", "decoder", "upsampler")


def _check_kind(kind: str) -> None:
  if kind not in KINDS:
    raise ValueError(f"unknown model kind {kind!r}; choose one of {', '.join(KINDS)}")


def model_dict(kind: str, stage_config: Mapping[str, Any]) -> Mapping[str, Any]:
  """The model config inside a stage.json `config`: the whole dict for CLIP, its `model` otherwise."""
  _check_kind(kind)
  return stage_config if kind == "clip" else stage_config["model"]


def build_model(kind: str, model: Mapping[str, Any], *, dtype: str | None = None, remat: bool | None = None):
  """The linen module of `kind` from its model config; `dtype` overrides the compute dtype and `remat`
  the rematerialisation flag (sampling passes False: nothing is differentiated)."""
  _check_kind(kind)
  m = dict(model)
  if dtype:
    m["dtype"] = dtype
  if remat is not None:
    m["remat"] = remat
  if kind == "clip":
    return clip_model.CLIP(clip_model.CLIPConfig.from_dict(m))
  if kind == "prior":
    return prior_model.from_config(m)
  if kind == "decoder":
    return unet_model.decoder_from_config(m)
  return unet_model.unet_from_config(m, decoder=False)


def abstract_params(kind: str, model: Mapping[str, Any]):
  """The shapes and dtypes of the tree a stage checkpoint of `kind` stores, without running init:
  CLIP and UNet params; for the prior {"params", "stats"} (its embedding standardisation)."""
  _check_kind(kind)
  if kind == "clip":
    return clip_model.abstract_params(clip_model.CLIPConfig.from_dict(dict(model)))
  module = build_model(kind, model, remat=False)
  key = jax.random.PRNGKey(0)
  if kind == "prior":
    v = jax.eval_shape(lambda: prior_model.init_variables(module, key))
    return {"params": v["params"], prior_model.STATS: v[prior_model.STATS]}
  if kind == "decoder":
    return jax.eval_shape(lambda: unet_model.init_decoder(module, key, image_size=8,
                                                          text_len=int(dict(model).get("text_len", 1))))["params"]
  size = 2 ** (len(model["block_out_channels"]) - 1)  # the smallest size every level can halve
  return jax.eval_shape(lambda: unet_model.init_unet(module, key, image_size=size))["params"]
