"""Pipelines with random weights, from the package's model presets: for tests, benchmarks and GPU smoke
tests, where outputs only need to be finite, deterministic and seed-dependent."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from unclip_jax.checkpoint import save_stage
from unclip_jax.diffusion.config import diffusion_config
from unclip_jax.errors import UserError
from unclip_jax.models import clip as clip_model
from unclip_jax.models import registry
from unclip_jax.models.presets import CLIP_PRESET_NAMES, model_config
from unclip_jax.pipeline.folder import STAGE_KINDS, check_new_folder, write_folder, write_pipeline_json
from unclip_jax.pipeline.settings import DIFFUSION_STAGES, StageSampling

PRESETS = ("tiny", "karlo")
# Tiny pipelines sample with few steps so CPU tests stay fast; karlo keeps Karlo's defaults.
TINY_SAMPLING = {"prior": {"steps": "4"}, "decoder": {"steps": "4"}, "sr_64_256": {"steps": "3"}}
# stage -> (model kind, tiny preset, karlo preset)
_STAGE_PRESETS = {"prior": ("prior", "tiny", "karlo"), "decoder": ("decoder", "tiny", "karlo"),
                  "sr_64_256": ("upsampler", "tiny_64_256", "karlo_64_256")}


def random_stage_configs(preset: str) -> dict[str, tuple[str, dict]]:
  """{stage: (kind, stage.json config)} for a random pipeline of `preset` ("tiny" or "karlo")."""
  if preset not in PRESETS:
    raise UserError(f"unknown pipeline preset {preset!r}; choose 'tiny' or 'karlo'")
  clip = clip_model.PRESETS[CLIP_PRESET_NAMES["tiny" if preset == "tiny" else "vit_l14"]].to_dict()
  out = {"clip": ("clip", clip)}
  for stage, (kind, tiny, karlo) in _STAGE_PRESETS.items():
    name = tiny if preset == "tiny" else karlo
    model = model_config(kind, name).to_dict()
    model["remat"] = False
    if preset == "tiny":
      model["dtype"] = "float32"
    model = json.loads(json.dumps(model, default=list))
    out[stage] = (kind, {"preset": name, "stage": stage, "model": model,
                         "diffusion": diffusion_config(stage, "karlo").to_dict(), "source": "random"})
  out["sr_64_256_last"] = ("upsampler", dict(out["sr_64_256"][1], stage="sr_64_256"))
  return out


def default_sampling(configs: dict[str, tuple[str, dict]], preset: str) -> dict[str, StageSampling]:
  """Each diffusion stage's sampling defaults (its diffusion config's), with few steps for `tiny`."""
  sampling = {s: StageSampling.from_dict(configs[s][1]["diffusion"]["sample"]) for s in DIFFUSION_STAGES
              if s in configs}
  if preset == "tiny":
    sampling = {s: StageSampling.from_dict({**v.to_dict(), **TINY_SAMPLING.get(s, {})}) for s, v in sampling.items()}
  return sampling


def _fill_value(name: str, shape: tuple[int, ...]) -> tuple[str, float]:
  """(how, scale) of a random leaf: ones for norm scales and clip_std, zeros for biases and clip_mean,
  fan-in-scaled normals for kernels, N(0, 0.02) for embeddings."""
  if name in ("scale", "clip_std"):
    return "ones", 1.0
  if name in ("bias", "clip_mean"):
    return "zeros", 0.0
  if name == "logit_scale":
    return "const", math.log(1 / 0.07)
  if name in ("kernel", "text_projection", "proj"):
    return "normal", float(np.prod(shape[:-1])) ** -0.5
  return "normal", 0.02


def random_params(stage: str, kind: str, config: dict, seed: int):
  """Random float32 parameters of one stage, filled leaf by leaf (no init compile: fast on CPU).

  Norm scales are one, biases zero, kernels N(0, 1/fan_in), other leaves N(0, 0.02)."""
  abstract = registry.abstract_params(kind, registry.model_dict(kind, config))
  flat, treedef = jax.tree_util.tree_flatten_with_path(abstract)
  total = sum(int(np.prod(leaf.shape)) for _, leaf in flat)
  stage_seed = seed * 16 + list(STAGE_KINDS).index(stage)
  rng = np.random.default_rng(stage_seed)
  key = jax.random.PRNGKey(stage_seed)
  leaves = []
  for i, (path, leaf) in enumerate(flat):
    name = str(getattr(path[-1], "key", path[-1]))
    how, scale = _fill_value(name, tuple(leaf.shape))
    if how == "normal":
      if total < 50_000_000:  # small models: numpy on the host
        leaves.append((rng.standard_normal(leaf.shape, np.float32) * np.float32(scale)))
      else:  # large models: on the default device, one leaf at a time
        leaves.append(jax.random.normal(jax.random.fold_in(key, i), leaf.shape, jnp.float32) * scale)
    else:
      value = {"ones": 1.0, "zeros": 0.0}.get(how, scale)
      leaves.append(np.full(leaf.shape, value, np.float32))
  return jax.tree_util.tree_unflatten(treedef, leaves)


def make_random_pipeline(out_dir: str | os.PathLike, preset: str = "tiny", seed: int = 0) -> Path:
  """Writes a pipeline folder with random weights (whole or not at all)."""
  out = check_new_folder(out_dir)
  configs = random_stage_configs(preset)

  def build(staging: Path) -> None:
    for stage, (kind, config) in configs.items():
      save_stage(staging / stage, random_params(stage, kind, config, seed), kind=kind, config=config)
    sampling = {s: v.to_dict() for s, v in default_sampling(configs, preset).items()}
    write_pipeline_json(staging, {s: s for s in configs}, sampling, preset, {"source": f"random seed {seed}"})
  return write_folder(out, build)
