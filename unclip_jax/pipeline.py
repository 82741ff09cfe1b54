"""Pipeline folders and the jitted unCLIP sampling stages every sampling CLI shares.

A pipeline folder (DESIGN.md):

    DIR/pipeline.json   {"kind": "unclip_pipeline", "format": 1, "preset", "stages": {name: relative path},
                         "sampling": {stage: {steps, sampler, eta, guidance_scale, clip_x0, dynamic_threshold}}}
    DIR/clip/ prior/ decoder/ sr_64_256/ [sr_64_256_last/] [sr_256_1024/]   stage checkpoints (checkpoint.py)

Sampling runs text → tokens → CLIP text tower → prior (guided against the empty caption, N candidates,
keep the best z_i·z_t) → decoder (guided; the unconditional half uses the learned CFG image embedding and
the empty caption, as Karlo / diffusers do) → upsamplers (noisy image concatenated with the bicubic
upsampled low-resolution one; Karlo's last SR step uses `sr_64_256_last`) → uint8 images.

A whole call (`generate`, or `decode_embeddings` for the applications) is one jitted program: the text
encoder, each diffusion stage's `diffusion.sample` (one `lax.scan` each) and the conversion to uint8,
composed from the same traced pieces the single-stage methods (`encode_text`, `sample_prior`, `decode`,
`upsample`) jit on their own. It is compiled once per (batch, settings), the guidance scales being
arguments, and split over all local devices by sharding the batch axis; nothing returns to the host
between stages.

Every image has its own seed: all its noise comes from `PRNGKey(seed)` (folded per stage), so an image
does not depend on which other images share its batch. Bit-exact reproduction also needs the same
compiled batch size (XLA may round differently for other shapes); the sidecar records it.

    python -m unclip_jax.pipeline init-random --preset tiny --out DIR
    python -m unclip_jax.pipeline assemble --clip C --prior P --decoder D --sr-64-256 S [--sr-64-256-last L] --out DIR
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from unclip_jax.errors import UserError, run_cli

PIPELINE_FILE = "pipeline.json"
FORMAT_VERSION = 1
# stage name -> stage checkpoint kind; required stages first
STAGE_KINDS = {"clip": "clip", "prior": "prior", "decoder": "decoder", "sr_64_256": "upsampler",
               "sr_64_256_last": "upsampler", "sr_256_1024": "upsampler"}
REQUIRED = ("clip", "prior", "decoder", "sr_64_256")
DIFFUSION_STAGES = ("prior", "decoder", "sr_64_256", "sr_256_1024")
MAX_STEPS = 1000  # a respaced process can keep at most the training steps
SAMPLING_FIELDS = ("steps", "sampler", "eta", "guidance_scale", "clip_x0", "dynamic_threshold")


# ------------------------------------------------------------------------------------------ settings


@dataclasses.dataclass(frozen=True)
class StageSampling:
  """How one diffusion stage is sampled (the `sample` sub-config of its diffusion config)."""
  steps: str = "25"
  sampler: str = "ddpm"
  eta: float = 0.0
  guidance_scale: float = 1.0
  clip_x0: float = 1.0
  dynamic_threshold: float = 0.0

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d) -> StageSampling:
    return cls(**{k: (str(d[k]) if k in ("steps", "sampler") else float(d[k])) for k in SAMPLING_FIELDS if k in d})


def check_steps(steps: Any, what: str) -> str:
  """A step count (int or respacing string such as "25" / "ddim50") → the respacing string; UserError if bad."""
  text = str(steps).strip()
  digits = text[4:] if text.startswith("ddim") else text
  if "," not in digits and not text.startswith("fast"):
    try:
      n = int(digits)
    except ValueError:
      raise UserError(f"{what} must be a whole number of steps (or 'ddimN'), got {steps!r}") from None
    if not 1 <= n <= MAX_STEPS:
      raise UserError(f"{what} must lie between 1 and {MAX_STEPS} (the training steps), got {n}")
  return text


def check_scale(value: Any, what: str) -> float:
  try:
    v = float(value)
  except (TypeError, ValueError):
    raise UserError(f"{what} must be a number, got {value!r}") from None
  if not math.isfinite(v):
    raise UserError(f"{what} must be a finite number, got {value!r}")
  return v


def check_sampling(s: StageSampling, stage: str) -> StageSampling:
  """Validates a stage's settings (UserError naming the stage) and returns them normalised."""
  steps = check_steps(s.steps, f"{stage} steps")
  if s.sampler not in ("ddpm", "ddim"):
    raise UserError(f"{stage} sampler must be 'ddpm' or 'ddim', got {s.sampler!r}")
  guidance = check_scale(s.guidance_scale, f"{stage} guidance scale")
  eta = check_scale(s.eta, f"{stage} DDIM eta")
  if eta < 0:
    raise UserError(f"{stage} DDIM eta must be >= 0, got {eta}")
  clip = check_scale(s.clip_x0, f"{stage} clip_x0")
  dyn = check_scale(s.dynamic_threshold, f"{stage} dynamic threshold")
  if clip < 0 or not 0 <= dyn < 1:
    raise UserError(f"{stage}: clip_x0 must be >= 0 and dynamic_threshold in [0, 1)")
  return StageSampling(steps, s.sampler, eta, guidance, clip, dyn)


# ------------------------------------------------------------------------------------- folders / meta


def _load_config_module(name: str):
  path = Path(__file__).resolve().parents[1] / "configs" / f"{name}.py"
  if not path.is_file():
    raise UserError(f"the stage configs ({path.parent}) are not available; run from a source checkout")
  spec = importlib.util.spec_from_file_location(f"unclip_configs_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def stage_config(kind: str, arg: str):
  """configs/{kind}.py:get_config(arg) (ml_collections)."""
  return _load_config_module(kind).get_config(arg)


def read_pipeline(folder: str | os.PathLike) -> dict:
  """Reads and checks pipeline.json and every stage folder's kind; UserError naming what is wrong."""
  from unclip_jax.checkpoint import read_stage

  folder = Path(folder)
  if not folder.is_dir():
    raise UserError(f"pipeline folder {folder} does not exist")
  meta_path = folder / PIPELINE_FILE
  if not meta_path.is_file():
    kind = ""
    if (folder / "stage.json").is_file():
      kind = " (it is a single stage checkpoint; build a pipeline with `python -m unclip_jax.pipeline assemble`)"
    raise UserError(f"{folder} is not a pipeline folder: no {PIPELINE_FILE}{kind}")
  try:
    meta = json.loads(meta_path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise UserError(f"{meta_path} is not valid JSON ({getattr(e, 'msg', e)})") from None
  if not isinstance(meta, dict) or meta.get("kind") != "unclip_pipeline" or not isinstance(meta.get("stages"), dict):
    raise UserError(f"{meta_path} is not an unclip_jax pipeline file (needs kind 'unclip_pipeline' and 'stages')")
  stages = meta["stages"]
  missing = [s for s in REQUIRED if not stages.get(s)]
  if missing:
    raise UserError(f"{meta_path} names no folder for stage(s): {', '.join(missing)}")
  unknown = sorted(set(stages) - set(STAGE_KINDS))
  if unknown:
    raise UserError(f"{meta_path} has unknown stage(s): {', '.join(unknown)}")
  paths, stage_meta = {}, {}
  for name, rel in stages.items():
    if not rel:
      continue
    path = (folder / rel) if not os.path.isabs(rel) else Path(rel)
    if not path.is_dir():
      raise UserError(f"pipeline stage {name}: folder {path} does not exist")
    stage_meta[name] = read_stage(path, kind=STAGE_KINDS[name])
    paths[name] = path
  sampling = {}
  for stage in DIFFUSION_STAGES:
    if stage not in paths:
      continue
    base = stage_meta[stage].get("config", {}).get("diffusion", {}).get("sample", {})
    merged = {**base, **(meta.get("sampling", {}).get(stage) or {})}
    try:
      sampling[stage] = check_sampling(StageSampling.from_dict(merged), stage)
    except (TypeError, KeyError) as e:
      raise UserError(f"{meta_path}: bad sampling settings for {stage} ({e})") from None
  return {"meta": meta, "paths": paths, "stages": stage_meta, "sampling": sampling}


def _write_pipeline_json(out: Path, stages: dict[str, str], sampling: dict, preset: str, extra=None) -> None:
  from unclip_jax.io import write_text_atomic

  meta = {"kind": "unclip_pipeline", "format": FORMAT_VERSION, "preset": preset, "stages": stages,
          "sampling": sampling, **(extra or {})}
  write_text_atomic(out / PIPELINE_FILE, json.dumps(meta, indent=2, sort_keys=True))


def assemble(out: str | os.PathLike, stage_dirs: dict[str, str | None], *, preset: str = "karlo",
             sampling: dict | None = None) -> Path:
  """Writes `out/pipeline.json` pointing at existing stage folders (stored relative to `out`; no copy).

  Sampling defaults are the Karlo ones (25/25/7 steps, guidance 4 and 8) unless `preset` is "paper".
  """
  from unclip_jax.checkpoint import read_stage
  from unclip_jax.diffusion.config import diffusion_config

  out = Path(out)
  if (out / PIPELINE_FILE).exists():
    raise UserError(f"{out / PIPELINE_FILE} already exists; choose another --out folder")
  missing = [s for s in REQUIRED if not stage_dirs.get(s)]
  if missing:
    raise UserError(f"assemble needs a folder for stage(s): {', '.join(missing)}")
  for name, path in stage_dirs.items():
    if path:
      read_stage(path, kind=STAGE_KINDS[name])
  flavour = "paper" if preset == "paper" else "karlo"
  defaults = {s: StageSampling.from_dict(diffusion_config(s, flavour).sample.to_dict()).to_dict()
              for s in DIFFUSION_STAGES if stage_dirs.get(s)}
  for s, d in (sampling or {}).items():
    defaults[s] = {**defaults.get(s, {}), **d}
  out.mkdir(parents=True, exist_ok=True)
  rel = {n: os.path.relpath(Path(p).absolute(), out.absolute()) for n, p in stage_dirs.items() if p}
  _write_pipeline_json(out, rel, defaults, preset)
  return out


def random_stage_configs(preset: str) -> dict[str, tuple[str, dict]]:
  """{stage: (kind, stage.json config)} for a random pipeline of `preset` ("tiny" or "karlo")."""
  from unclip_jax.models import clip as clip_model

  if preset not in ("tiny", "karlo"):
    raise UserError(f"unknown pipeline preset {preset!r}; choose 'tiny' or 'karlo'")
  clip_cfg = clip_model.PRESETS["tiny" if preset == "tiny" else "ViT-L/14"].to_dict()
  out = {"clip": ("clip", clip_cfg)}
  for stage, kind, arg in (("prior", "prior", preset), ("decoder", "decoder", preset),
                           ("sr_64_256", "upsampler", "tiny" if preset == "tiny" else "karlo_64_256")):
    c = stage_config(kind, arg)
    model = c.model.to_dict()
    model["remat"] = False
    if preset == "tiny":
      model["dtype"] = "float32"
    model = json.loads(json.dumps(model, default=list))
    out[stage] = (kind, {"preset": c.preset, "stage": stage, "model": model,
                         "diffusion": c.diffusion.to_dict(), "source": "random"})
  out["sr_64_256_last"] = ("upsampler", dict(out["sr_64_256"][1], stage="sr_64_256"))
  return out


# Tiny pipelines sample with few steps so CPU tests stay fast; karlo keeps Karlo's defaults.
TINY_SAMPLING = {"prior": {"steps": "4"}, "decoder": {"steps": "4"}, "sr_64_256": {"steps": "3"}}


def _init_shapes(stage: str, kind: str, config: dict):
  """Abstract parameter tree of a stage (the tree its checkpoint stores), without running init."""
  key = jax.random.PRNGKey(0)
  if kind == "clip":
    from unclip_jax.models import clip as clip_model
    return clip_model.abstract_params(clip_model.CLIPConfig.from_dict(config))
  model = build_model(kind, config["model"])
  m = config["model"]
  if kind == "prior":
    from unclip_jax.models.prior import init_variables
    v = jax.eval_shape(lambda: init_variables(model, key))
    return {"params": v["params"], "stats": v["stats"]}
  from unclip_jax.models import unet as unet_lib
  if kind == "decoder":
    return jax.eval_shape(lambda: unet_lib.init_decoder(model, key, image_size=8, text_len=m["text_len"]))["params"]
  size = 2 ** (len(m["block_out_channels"]) - 1)
  return jax.eval_shape(lambda: unet_lib.init_unet(model, key, image_size=size))["params"]


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

  Norm scales are one, biases zero, kernels N(0, 1/fan_in), other leaves N(0, 0.02): enough for
  pipelines whose outputs only need to be finite, deterministic and seed-dependent."""
  abstract = _init_shapes(stage, kind, config)
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
  """Writes a pipeline folder with random weights from the configs (tests, GPU smoke tests)."""
  from unclip_jax.checkpoint import save_stage

  out = Path(out_dir)
  if out.exists() and any(out.iterdir()):
    raise UserError(f"{out} already exists and is not empty; choose another --out folder")
  configs = random_stage_configs(preset)
  staging = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
  try:
    staging.mkdir(parents=True)
    for stage, (kind, config) in configs.items():
      params = random_params(stage, kind, config, seed)
      save_stage(staging / stage, params, kind=kind, config=config)
      del params
    sampling = {s: StageSampling.from_dict(configs[s][1]["diffusion"]["sample"]).to_dict()
                for s in DIFFUSION_STAGES if s in configs}
    if preset == "tiny":
      for s, d in TINY_SAMPLING.items():
        sampling[s].update(d)
    _write_pipeline_json(staging, {s: s for s in configs}, sampling, preset, {"source": f"random seed {seed}"})
    if out.exists():
      out.rmdir()
    os.replace(staging, out)
  finally:
    if staging.exists():
      shutil.rmtree(staging, ignore_errors=True)
  return out


# --------------------------------------------------------------------------------------------- models


def build_model(kind: str, m: dict, dtype: str | None = None):
  """The linen module of a stage from its stage.json `model` dict (compute dtype optionally overridden)."""
  m = dict(m)
  if dtype:
    m["dtype"] = dtype
  m["remat"] = False
  if kind == "prior":
    from unclip_jax.models.prior import from_config
    return from_config(m)
  from unclip_jax.models import unet as unet_lib
  if kind == "decoder":
    return unet_lib.decoder_from_config(m)
  return unet_lib.unet_from_config(m, decoder=False)


def _abstract(kind: str, config: dict):
  if kind == "clip":
    from unclip_jax.models import clip as clip_model
    return clip_model.abstract_params(clip_model.CLIPConfig.from_dict(config))
  return _init_shapes("prior" if kind == "prior" else "decoder", kind, config)


def load_stage_tree(path: Path, kind: str, meta: dict, *, ema: bool, log: Callable[[str], None]):
  """Restores a stage's parameter tree. A checkpoint whose stage.json says `"ema": true` stores
  {"params": TREE, "ema": TREE}; `ema` picks the EMA copy (falling back to params, with a message)."""
  from unclip_jax.checkpoint import load_stage_params

  try:
    abstract = _abstract(kind, meta["config"])
  except UserError:
    raise
  except (KeyError, TypeError, ValueError) as e:
    raise UserError(f"{path}/stage.json has an invalid {kind} config ({type(e).__name__}: {e})") from None
  if meta.get("ema"):
    tree = load_stage_params(path, {"params": abstract, "ema": abstract}, kind=kind)
    return tree["ema" if ema else "params"], ("ema" if ema else "params")
  if ema and kind != "clip":
    log(f"{path.name}: no EMA weights in this checkpoint; using its params")
  return load_stage_params(path, abstract, kind=kind), "params"


# -------------------------------------------------------------------------------------------- helpers


def bicubic_matrix(n_in: int, n_out: int, a: float = -0.5) -> np.ndarray:
  """(n_out, n_in) weights of torch's antialiased bicubic resize (F.interpolate(mode="bicubic",
  antialias=True), what diffusers' unCLIP pipeline calls): Keys' kernel with a = -0.5 (PIL's), a window
  cut at the borders and renormalised, stretched by the scale when downsampling."""
  def w(x):
    x = abs(x)
    if x < 1:
      return (a + 2) * x ** 3 - (a + 3) * x ** 2 + 1
    if x < 2:
      return a * x ** 3 - 5 * a * x ** 2 + 8 * a * x - 4 * a
    return 0.0
  scale = n_in / n_out
  support = 2.0 * max(scale, 1.0)
  inv = 1.0 / max(scale, 1.0)
  m = np.zeros((n_out, n_in), np.float64)
  for i in range(n_out):
    center = scale * (i + 0.5)
    lo = max(int(center - support + 0.5), 0)
    hi = min(int(center + support + 0.5), n_in)
    ws = np.array([w((j - center + 0.5) * inv) for j in range(lo, hi)])
    m[i, lo:hi] = ws / ws.sum()
  return m.astype(np.float32)


def upsample_bicubic(x: jax.Array, size: int) -> jax.Array:
  """NHWC bicubic resize to (size, size) exactly as diffusers' unCLIP pipeline does it (see bicubic_matrix)."""
  mh = jnp.asarray(bicubic_matrix(x.shape[1], size))
  mw = jnp.asarray(bicubic_matrix(x.shape[2], size))
  x = jnp.einsum("oh,bhwc->bowc", mh, x, precision=jax.lax.Precision.HIGHEST)
  return jnp.einsum("pw,bowc->bopc", mw, x, precision=jax.lax.Precision.HIGHEST)


def slerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
  """Spherical interpolation of directions with linearly interpolated norms; t = 0 / 1 give a / b exactly."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if t == 0:
    return a.astype(np.float32)
  if t == 1:
    return b.astype(np.float32)
  na, nb = np.linalg.norm(a, axis=-1, keepdims=True), np.linalg.norm(b, axis=-1, keepdims=True)
  ua, ub = a / na, b / nb
  dot = np.clip(np.sum(ua * ub, axis=-1, keepdims=True), -1.0, 1.0)
  theta = np.arccos(dot)
  small = theta < 1e-6
  s = np.where(small, 1.0, np.sin(theta))
  u = np.where(small, (1 - t) * ua + t * ub, (np.sin((1 - t) * theta) * ua + np.sin(t * theta) * ub) / s)
  return (u * ((1 - t) * na + t * nb)).astype(np.float32)


def _decoder_branches(uncond_row, img, emb, states, mask):
  """The decoder's (cond, uncond) for one image: both see the CLIP image embedding; the unconditional
  branch gets the empty caption and the flag that swaps in the learned CFG embedding (Karlo, diffusers)."""
  e = lambda a: a[None]  # noqa: E731
  cond = (e(img), e(emb), e(states), e(mask), jnp.zeros((1,), bool))
  uncond = (e(img), *uncond_row, jnp.ones((1,), bool))
  return cond, uncond


def _uint8(x: jax.Array) -> jax.Array:
  return jnp.clip(jnp.round((x.astype(jnp.float32) + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def to_uint8(x) -> np.ndarray:
  """Images in [-1, 1] → uint8 [0, 255] (round to nearest)."""
  return np.asarray(_uint8(jnp.asarray(x)))


def image_keys(seeds: Sequence[int]) -> np.ndarray:
  """Per-image PRNG keys (uint32 (B, 2)): all of an image's noise derives from its own seed."""
  for s in seeds:
    if not 0 <= int(s) < 2 ** 32:
      raise UserError(f"seed {s} is out of range; use 0 <= seed < 2**32")
  return np.stack([np.asarray(jax.random.PRNGKey(int(s))) for s in seeds]).astype(np.uint32)


# Per-image sub-keys: fold_in(image key, STREAM)
PRIOR_KEY, DECODER_KEY, DECODER_NOISE_KEY, SR_KEY = 0, 1, 2, 3


@dataclasses.dataclass
class TextEncoding:
  """CLIP text encodings of a batch: pooled embeds (B, E), per-token states (B, L, W), mask (B, L)."""
  embeds: np.ndarray
  states: np.ndarray
  mask: np.ndarray

  def take(self, idx) -> TextEncoding:
    return TextEncoding(self.embeds[idx], self.states[idx], self.mask[idx])


@dataclasses.dataclass
class SRStage:
  name: str
  model: Any
  params: Any
  last_params: Any  # Karlo's sr_64_256_last, used for the final step; None if absent
  low_res: int
  size: int


# ------------------------------------------------------------------------------------------- pipeline


class Pipeline:
  """A loaded pipeline: models, parameters on device, default settings, and its compiled programs.

  Methods take host arrays with any batch size B, pad B to `batch` rows (a multiple of the local device
  count; padding repeats the last row) and return host arrays of B rows.
  """

  def __init__(self, components: dict, sampling: dict[str, StageSampling], *, name: str = "", dtype: str | None = None,
               log: Callable[[str], None] = print, weights: dict | None = None):
    from unclip_jax.models import clip as clip_model
    from unclip_jax.models.tokenizer import Tokenizer

    self.name, self.log, self.dtype = name, log, dtype
    self.weights = weights or {}
    self.sampling = sampling
    cfg = clip_model.CLIPConfig.from_dict(components["clip"][1])
    if dtype:
      cfg = cfg.replace(dtype=dtype)
    self.clip_config = cfg
    self.clip = clip_model.CLIP(cfg)
    self.tokenizer = Tokenizer(context_length=cfg.context_length)
    devices = jax.local_devices()
    self.mesh = jax.sharding.Mesh(np.array(devices), ("data",))
    self.n_devices = len(devices)
    self._replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
    self._batched = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec("data"))
    put = lambda tree: jax.device_put(tree, self._replicated)  # noqa: E731
    self.clip_params = put(components["clip"][2])
    pc = components["prior"][1]["model"]
    self.prior = build_model("prior", pc, dtype)
    self.prior_vars = put(components["prior"][2])
    if self.prior.embedding_dim != cfg.embed_dim or self.prior.num_embeddings != cfg.context_length:
      raise UserError(f"the prior ({self.prior.embedding_dim}-d, {self.prior.num_embeddings} tokens) does not fit "
                      f"the CLIP model ({cfg.embed_dim}-d, context {cfg.context_length})")
    dm = components["decoder"][1]["model"]
    self.decoder = build_model("decoder", dm, dtype)
    self.decoder_params = put(components["decoder"][2])
    if dm["clip_embeddings_dim"] != cfg.embed_dim:
      raise UserError(f"the decoder takes {dm['clip_embeddings_dim']}-d CLIP embeddings, CLIP gives {cfg.embed_dim}")
    self.image_size = int(dm["image_size"])
    self.srs: list[SRStage] = []
    size = self.image_size
    for name in ("sr_64_256", "sr_256_1024"):
      if name not in components:
        continue
      m = components[name][1]["model"]
      factor = int(m["image_size"]) // int(m["low_res_size"])
      last = components.get(f"{name}_last")
      self.srs.append(SRStage(name, build_model("upsampler", m, dtype), put(components[name][2]),
                              put(last[2]) if last else None, size, size * factor))
      size *= factor
    self.output_size = size
    self._diffusion = {name: components[name][1].get("diffusion") for name in DIFFUSION_STAGES if name in components}
    self._compiled: dict = {}
    self.timings: list[dict] = []
    self._uncond = None

  # ------------------------------------------------------------------------------------------ loading

  @classmethod
  def load(cls, folder: str | os.PathLike, *, ema: bool = True, dtype: str | None = None,
           log: Callable[[str], None] = print) -> Pipeline:
    info = read_pipeline(folder)
    comps, weights = {}, {}
    for name, path in info["paths"].items():
      meta = info["stages"][name]
      tree, which = load_stage_tree(path, STAGE_KINDS[name], meta, ema=ema, log=log)
      comps[name] = (STAGE_KINDS[name], meta["config"], tree)
      weights[name] = which
    try:
      return cls(comps, info["sampling"], name=str(folder), dtype=dtype, log=log, weights=weights)
    except (KeyError, TypeError) as e:
      raise UserError(f"{folder}: a stage config lacks a field the pipeline needs ({e})") from None

  @classmethod
  def random(cls, preset: str = "tiny", seed: int = 0, *, dtype: str | None = None,
             log: Callable[[str], None] = print) -> Pipeline:
    """A pipeline with random weights built in memory (benchmarks; nothing is written)."""
    configs = random_stage_configs(preset)
    comps = {s: (k, c, random_params(s, k, c, seed)) for s, (k, c) in configs.items()}
    sampling = {s: StageSampling.from_dict(configs[s][1]["diffusion"]["sample"]) for s in DIFFUSION_STAGES
                if s in configs}
    if preset == "tiny":
      sampling = {s: dataclasses.replace(v, **TINY_SAMPLING.get(s, {})) for s, v in sampling.items()}
    return cls(comps, sampling, name=f"random:{preset}", dtype=dtype, log=log)

  # --------------------------------------------------------------------------------------- machinery

  def padded_batch(self, n: int, batch: int | None = None) -> int:
    """Rows of the compiled program for n images: `batch` (or n) rounded up to the device count."""
    b = max(1, min(n, batch or n))
    return -(-b // self.n_devices) * self.n_devices

  def _run(self, stage: str, key: tuple, fn: Callable, replicated: tuple, batched: tuple, n: int, rows: int):
    """Runs `fn(*replicated, *batched)` jitted with the batch axis sharded; pads to `rows`, returns n rows."""
    def pad(x):
      x = np.asarray(x)
      if x.shape[0] == rows:
        return x
      return np.concatenate([x, np.repeat(x[-1:], rows - x.shape[0], axis=0)], axis=0)
    batched = tuple(jax.device_put(pad(x), self._batched) for x in batched)
    cache_key = (stage, rows) + key
    compile_s = 0.0
    if cache_key not in self._compiled:
      start = time.perf_counter()
      jitted = jax.jit(fn, in_shardings=(self._replicated,) * len(replicated) + (self._batched,) * len(batched),
                       out_shardings=self._batched)
      self._compiled[cache_key] = jitted.lower(*replicated, *batched).compile()
      compile_s = time.perf_counter() - start
    start = time.perf_counter()
    out = jax.block_until_ready(self._compiled[cache_key](*replicated, *batched))
    run_s = time.perf_counter() - start
    self.timings.append({"stage": stage, "rows": rows, "compile_s": compile_s, "run_s": run_s})
    self.log(f"  {stage}: {rows} rows, " + (f"compile {compile_s:.2f}s, " if compile_s else "") + f"run {run_s:.2f}s")
    return jax.tree.map(lambda x: np.asarray(x)[:n], out)

  def _process(self, stage: str, steps: str):
    """The stage's training process (from its stage.json `diffusion`), respaced to `steps`."""
    import ml_collections

    from unclip_jax import diffusion as D

    cfg = self._diffusion.get(stage)
    cfg = ml_collections.ConfigDict(cfg) if cfg else D.diffusion_config(stage)
    try:
      return D.GaussianDiffusion.from_config(cfg).respace(steps)
    except (ValueError, KeyError) as e:
      raise UserError(f"{stage} steps {steps!r}: {e}") from None

  def _rows(self, n: int, batch: int | None, rows: int | None) -> int:
    if rows is None:
      return self.padded_batch(n, batch)
    if rows % self.n_devices or rows < min(n, batch or n):
      raise UserError(f"a compiled batch of {rows} rows does not fit {self.n_devices} device(s) and "
                      f"{min(n, batch or n)} images per batch")
    return rows

  def _chunks(self, n: int, batch: int | None):
    b = max(1, min(n, batch or n))
    return [(i, min(n, i + b)) for i in range(0, n, b)]

  # ---------------------------------------------------------------------------------- traced pieces
  # Each piece is a pure function of device arrays. A stage method jits one piece; `generate` and
  # `decode_embeddings` jit the pieces composed into one program for the whole call.

  def _text_piece(self):
    """(clip params, tokens (B, L)) → (pooled embeds (B, E), per-token states (B, L, W), mask (B, L))."""
    clip = self.clip

    def piece(params, tokens):
      emb, states = clip.apply({"params": params}, tokens, method=clip.encode_text)
      return emb, states, tokens != 0
    return piece

  def _prior_piece(self, s: StageSampling, candidates: int):
    """(variables, scale, keys (B, 2), text (B rows), uncond (1 row)) → CLIP image embeddings (B, E):
    per caption `candidates` prior samples, the one with the highest z_i·z_t kept."""
    from unclip_jax import diffusion as D
    from unclip_jax.models.prior import post_process_latents

    if candidates < 1 or candidates > 64:
      raise UserError(f"prior candidates must lie between 1 and 64, got {candidates}")
    process = self._process("prior", s.steps)
    prior, d = self.prior, self.prior.embedding_dim

    def one(variables, scale, uncond_row, key, emb, states, mask):
      tile = lambda a: jnp.broadcast_to(a[None], (candidates,) + a.shape)  # noqa: E731
      cond = (tile(emb), tile(states), tile(mask))
      uncond = tuple(tile(a[0]) for a in uncond_row)
      model_fn = lambda x, t, c: prior.apply(variables, x, t, *c)  # noqa: E731
      x = D.sample(process, model_fn, (candidates, d), jax.random.fold_in(key, PRIOR_KEY), cond=cond, uncond=uncond,
                   guidance_scale=scale, sampler=s.sampler, eta=s.eta, clip_x0=s.clip_x0 or None,
                   dynamic_threshold=s.dynamic_threshold or None)
      z = post_process_latents(variables["stats"], x)
      return z[jnp.argmax(z @ emb)]

    def piece(variables, scale, keys, text, uncond_row):
      return jax.vmap(lambda *a: one(variables, scale, uncond_row, *a))(keys, *text)
    return piece

  def _noise_one(self, key):
    return jax.random.normal(jax.random.fold_in(key, DECODER_NOISE_KEY), (self.image_size, self.image_size, 3))

  def _decoder_piece(self, s: StageSampling, trajectory: bool):
    """(params, scale, keys, x_T or None, image embeds (B, E), text (B rows), uncond (1 row)) → 64 px images
    in [-1, 1] (B, H, W, 3), and with `trajectory` the predicted x0 after every step (B, steps, H, W, 3).
    Without x_T the noise comes from each image's key (`decoder_noise`)."""
    from unclip_jax import diffusion as D

    process = self._process("decoder", s.steps)
    decoder, size = self.decoder, self.image_size

    def one(params, scale, uncond_row, key, noise, img, emb, states, mask):
      cond, uncond = _decoder_branches(uncond_row, img, emb, states, mask)
      model_fn = lambda x, t, c: decoder.apply({"params": params}, x, t, *c)  # noqa: E731
      out = D.sample(process, model_fn, (1, size, size, 3), jax.random.fold_in(key, DECODER_KEY), cond=cond,
                     uncond=uncond, guidance_scale=scale, sampler=s.sampler, eta=s.eta, clip_x0=s.clip_x0 or None,
                     dynamic_threshold=s.dynamic_threshold or None, x_T=noise[None], return_trajectory=trajectory)
      if trajectory:
        x, traj = out
        return jnp.clip(x[0], -1, 1), traj.pred_x0[:, 0]
      return jnp.clip(out[0], -1, 1)

    def piece(params, scale, keys, x_T, image_embeds, text, uncond_row):
      if x_T is None:
        x_T = jax.vmap(self._noise_one)(keys)
      return jax.vmap(lambda *a: one(params, scale, uncond_row, *a))(keys, x_T, image_embeds.astype(jnp.float32),
                                                                     *text)
    return piece

  def _invert_piece(self, s: StageSampling):
    """(params, scale, images in [-1, 1] (B, H, W, 3), image embeds, text (B rows), uncond (1 row)) → each
    image's DDIM latent x_T under the guided decoder (the paper's inversion; decode it with `s` and
    sampler "ddim", eta 0 to get the image back)."""
    from unclip_jax.diffusion.inversion import ddim_invert

    process = self._process("decoder", s.steps)
    decoder = self.decoder

    def one(params, scale, uncond_row, x0, img, emb, states, mask):
      cond, uncond = _decoder_branches(uncond_row, img, emb, states, mask)
      model_fn = lambda x, t, c: decoder.apply({"params": params}, x, t, *c)  # noqa: E731
      return ddim_invert(process, model_fn, x0[None], cond=cond, uncond=uncond, guidance_scale=scale)[0]

    def piece(params, scale, images, image_embeds, text, uncond_row):
      return jax.vmap(lambda *a: one(params, scale, uncond_row, *a))(images.astype(jnp.float32),
                                                                     image_embeds.astype(jnp.float32), *text)
    return piece

  def _upsample_piece(self, settings: dict[str, StageSampling]):
    """(per-upsampler (params, last params or None), keys, images in [-1, 1]) → images at the output size:
    the noisy image is concatenated with the bicubic-upsampled low-resolution one; Karlo's last step uses
    `sr_64_256_last`."""
    from unclip_jax import diffusion as D

    stages = []
    for i, sr in enumerate(self.srs):
      s = settings[sr.name]
      process = self._process(sr.name, s.steps)
      stages.append((i, sr.model, sr.size, s, process, int(process.timestep_map[0])))

    def one(i, model, size, s, process, last_t, params, last_params, key, low):
      up = upsample_bicubic(low[None], size)

      def model_fn(x, t, cond):
        inp = jnp.concatenate([x, cond], axis=-1)
        if last_params is None:
          return model.apply({"params": params}, inp, t)
        return jax.lax.cond(t[0] == last_t, lambda: model.apply({"params": last_params}, inp, t),
                            lambda: model.apply({"params": params}, inp, t))
      x = D.sample(process, model_fn, (1, size, size, 3), jax.random.fold_in(key, SR_KEY + i), cond=up,
                   sampler=s.sampler, eta=s.eta, clip_x0=s.clip_x0 or None,
                   dynamic_threshold=s.dynamic_threshold or None)
      return jnp.clip(x[0], -1, 1)

    def piece(sr_weights, keys, images):
      for stage, (params, last_params) in zip(stages, sr_weights):
        images = jax.vmap(lambda k, low, st=stage, p=params, lp=last_params: one(*st, p, lp, k, low))(keys, images)
      return images
    return piece

  def _sr_weights(self) -> list:
    return [(sr.params, sr.last_params) for sr in self.srs]

  @staticmethod
  def _key(s: StageSampling) -> tuple:
    """What of a stage's settings is baked into a compiled program (the guidance scale is an argument)."""
    return (s.steps, s.sampler, s.eta, s.clip_x0, s.dynamic_threshold)

  # ------------------------------------------------------------------------------- one stage each

  def tokenize(self, prompts: Sequence[str]) -> np.ndarray:
    return self.tokenizer(list(prompts), self.clip_config.context_length)

  def encode_text(self, prompts: Sequence[str], batch: int | None = None, rows: int | None = None) -> TextEncoding:
    tokens = self.tokenize(prompts)
    outs = [self._run("clip_text", (), self._text_piece(), (self.clip_params,), (tokens[lo:hi],), hi - lo,
                      rows or self.padded_batch(hi - lo, batch))
            for lo, hi in self._chunks(len(tokens), batch)]
    return TextEncoding(*(np.concatenate([o[j] for o in outs]) for j in range(3)))

  def _uncond_row(self) -> tuple:
    """The empty caption's encoding (one row), the unconditional branch of guidance."""
    if self._uncond is None:
      self._uncond = self.encode_text([""])
    u = self._uncond
    return (u.embeds, u.states, u.mask)

  def uncond(self, n: int) -> TextEncoding:
    """The empty caption's encoding repeated n times."""
    return TextEncoding(*(np.repeat(a, n, axis=0) for a in self._uncond_row()))

  def encode_images(self, images: np.ndarray, batch: int | None = None) -> np.ndarray:
    """uint8 (B, S, S, 3) at the CLIP image size → (B, E) CLIP image embeddings (unnormalised)."""
    from unclip_jax.models import clip as clip_model

    clip, cfg = self.clip, self.clip_config

    def fn(p, x):
      return clip.apply({"params": p}, clip_model.normalize_images(x, cfg), method=clip.encode_image)
    outs = []
    for lo, hi in self._chunks(len(images), batch):
      rows = self.padded_batch(hi - lo, batch)
      outs.append(self._run("clip_image", (), fn, (self.clip_params,), (images[lo:hi],), hi - lo, rows))
    return np.concatenate(outs)

  def sample_prior(self, text: TextEncoding, keys: np.ndarray, settings: StageSampling, *, candidates: int = 1,
                   rows: int | None = None) -> np.ndarray:
    """CLIP image embeddings (B, E): per caption `candidates` prior samples, the best z_i·z_t kept."""
    piece = self._prior_piece(settings, candidates)
    fn = lambda v, scale, u, keys, *text: piece(v, scale, keys, text, u)  # noqa: E731
    return self._run("prior", self._key(settings) + (candidates,), fn,
                     (self.prior_vars, np.float32(settings.guidance_scale), self._uncond_row()),
                     (keys, text.embeds, text.states, text.mask), len(keys), rows or self.padded_batch(len(keys)))

  def decoder_noise(self, keys: np.ndarray) -> np.ndarray:
    """The decoder's x_T for each image key (what `decode` uses when given no x_T)."""
    if "decoder_noise" not in self._compiled:
      self._compiled["decoder_noise"] = jax.jit(jax.vmap(self._noise_one))
    return np.asarray(self._compiled["decoder_noise"](keys))

  def decode(self, image_embeds: np.ndarray, text: TextEncoding, keys: np.ndarray, settings: StageSampling, *,
             x_T: np.ndarray | None = None, trajectory: bool = False, rows: int | None = None):
    """64 px images in [-1, 1] (B, H, W, 3) from CLIP image embeddings and captions; with `trajectory`
    also the predicted x0 after every step (B, steps, H, W, 3)."""
    piece = self._decoder_piece(settings, trajectory)
    fn = lambda p, scale, u, keys, x_T, emb, *text: piece(p, scale, keys, x_T, emb, text, u)  # noqa: E731
    x_T = self.decoder_noise(keys) if x_T is None else x_T
    return self._run("decoder", self._key(settings) + (trajectory,), fn,
                     (self.decoder_params, np.float32(settings.guidance_scale), self._uncond_row()),
                     (keys, x_T, np.asarray(image_embeds, np.float32), text.embeds, text.states, text.mask),
                     len(keys), rows or self.padded_batch(len(keys)))

  def invert(self, images: np.ndarray, image_embeds: np.ndarray, settings: StageSampling, *,
             prompts: Sequence[str] | None = None, batch: int | None = None) -> np.ndarray:
    """DDIM inversion of decoder-size images in [-1, 1] (B, H, W, 3) conditioned on their CLIP image
    embeddings (and captions, default empty): the x_T that `decode_embeddings` with these `settings`
    (sampler "ddim", eta 0) turns back into the images. One program: text encoder + inversion scan."""
    if tuple(images.shape[1:]) != (self.image_size, self.image_size, 3):
      raise UserError(f"images to invert must be {self.image_size}x{self.image_size} RGB (the decoder's size), "
                      f"got shape {tuple(images.shape[1:])}")
    text_fn, invert_fn = self._text_piece(), self._invert_piece(settings)

    def program(weights, scale, empty_tokens, images, image_embeds, tokens):
      return invert_fn(weights["decoder"], scale, images, image_embeds, text_fn(weights["clip"], tokens),
                       text_fn(weights["clip"], empty_tokens))
    n = len(images)
    tokens = self.tokenize(list(prompts) if prompts is not None else [""] * n)
    weights = {"clip": self.clip_params, "decoder": self.decoder_params}
    rows = self.padded_batch(n, batch)
    outs = [self._run(f"text → invert decoder {settings.steps}", self._key(settings), program,
                      (weights, np.float32(settings.guidance_scale), self.tokenize([""])),
                      (np.asarray(images[lo:hi], np.float32), np.asarray(image_embeds[lo:hi], np.float32),
                       tokens[lo:hi]), hi - lo, rows)
            for lo, hi in self._chunks(n, batch)]
    return np.concatenate(outs)

  def upsample(self, images: np.ndarray, keys: np.ndarray, settings: dict[str, StageSampling], *,
               rows: int | None = None) -> np.ndarray:
    """Runs every upsampler stage on images in [-1, 1]; returns images in [-1, 1] at the output size."""
    key = tuple(self._key(settings[sr.name]) + (sr.last_params is None,) for sr in self.srs)
    return self._run("upsamplers", key, self._upsample_piece(settings), (self._sr_weights(),),
                     (keys, np.asarray(images, np.float32)), len(keys), rows or self.padded_batch(len(keys)))

  # ---------------------------------------------------------------------- whole pipeline, one program

  def settings(self, overrides: dict[str, dict] | None = None) -> dict[str, StageSampling]:
    """The pipeline's default per-stage settings with `overrides` ({stage: {field: value}}) applied."""
    out = {}
    for stage, s in self.sampling.items():
      o = {k: v for k, v in (overrides or {}).get(stage, {}).items() if v is not None}
      out[stage] = check_sampling(dataclasses.replace(s, **o), stage)
    return out

  def _program(self, settings: dict[str, StageSampling], *, candidates: int, trajectory: bool, from_text: bool,
               given_noise: bool):
    """The whole call as one traced function: (weights, scales, empty caption tokens, per-image inputs) →
    {"images": uint8, "small", "image_embeds"[, "trajectory"]}. With `from_text` the per-image inputs are
    (keys, tokens), else (keys, tokens, image embeddings[, x_T])."""
    text_fn = self._text_piece()
    prior_fn = self._prior_piece(settings["prior"], candidates) if from_text else None
    decoder_fn = self._decoder_piece(settings["decoder"], trajectory)
    upsample_fn = self._upsample_piece(settings)

    def program(weights, scales, empty_tokens, keys, tokens, *rest):
      uncond_row = text_fn(weights["clip"], empty_tokens)
      text = text_fn(weights["clip"], tokens)
      if from_text:
        image_embeds = prior_fn(weights["prior"], scales["prior"], keys, text, uncond_row)
      else:
        image_embeds = rest[0]
      x_T = rest[1] if given_noise else None
      small = decoder_fn(weights["decoder"], scales["decoder"], keys, x_T, image_embeds, text, uncond_row)
      small, traj = small if trajectory else (small, None)
      out = {"images": _uint8(upsample_fn(weights["sr"], keys, small)), "small": small,
             "image_embeds": image_embeds.astype(jnp.float32)}
      if trajectory:
        out["trajectory"] = traj
      return out
    return program

  def _run_program(self, settings, *, candidates: int, trajectory: bool, keys, tokens, image_embeds=None, x_T=None,
                   rows: int) -> dict:
    from_text = image_embeds is None
    weights = {"clip": self.clip_params, "prior": self.prior_vars if from_text else None,
               "decoder": self.decoder_params, "sr": self._sr_weights()}
    scales = {s: np.float32(settings[s].guidance_scale) for s in ("prior", "decoder")}
    batched = (keys, tokens) + (() if from_text else (np.asarray(image_embeds, np.float32),)) + (
        () if x_T is None else (np.asarray(x_T, np.float32),))
    stages = ["prior"] * from_text + ["decoder"] + [sr.name for sr in self.srs]
    key = (tuple((st,) + self._key(settings[st]) for st in stages), candidates, trajectory, from_text, x_T is not None,
           tuple(sr.last_params is None for sr in self.srs))
    label = " → ".join(["text"] + [f"{st} {settings[st].steps}" for st in stages])
    program = self._program(settings, candidates=candidates, trajectory=trajectory, from_text=from_text,
                            given_noise=x_T is not None)
    return self._run(label, key, program, (weights, scales, self.tokenize([""])), batched, len(keys), rows)

  def _check_prompts(self, prompts: Sequence[str]) -> None:
    for p in dict.fromkeys(prompts):
      if len(self.tokenizer.encode(p)) + 2 > self.clip_config.context_length:
        self.log(f"warning: the prompt {p[:40]!r}... is longer than CLIP's {self.clip_config.context_length} tokens "
                 "and was truncated")

  def generate(self, prompts: Sequence[str], seeds: Sequence[int], settings: dict[str, StageSampling], *,
               candidates: int = 1, batch: int | None = None, trajectory: bool = False,
               rows: int | None = None) -> dict:
    """Text → images, each batch of `batch` prompts one compiled program (text encoder, prior, decoder and
    upsamplers). Returns {"images": uint8 (B, S, S, 3), "image_embeds", "small" (decoder output in
    [-1, 1]), "trajectory" (decoder predicted x0 per step, if asked), "rows" (compiled batch)}."""
    prompts = [str(p) for p in prompts]
    if not prompts or len(prompts) != len(seeds):
      raise UserError("give one seed per prompt (and at least one prompt)")
    for p in prompts:
      if not p.strip():
        raise UserError("a prompt is empty; give some text to draw")
    keys_all = image_keys(seeds)
    self._check_prompts(prompts)
    tokens = self.tokenize(prompts)
    rows = self._rows(len(prompts), batch, rows)
    outs = []
    for lo, hi in self._chunks(len(prompts), batch):
      self.log(f"images {lo + 1}-{hi} of {len(prompts)}")
      outs.append(self._run_program(settings, candidates=candidates, trajectory=trajectory, keys=keys_all[lo:hi],
                                    tokens=tokens[lo:hi], rows=rows))
    return self._gather(outs, rows)

  def decode_embeddings(self, image_embeds: np.ndarray, seeds: Sequence[int], settings: dict[str, StageSampling], *,
                        prompts: Sequence[str] | None = None, x_T: np.ndarray | None = None,
                        batch: int | None = None, trajectory: bool = False) -> dict:
    """CLIP image embeddings → images (the applications), one compiled program per batch (text encoder,
    decoder, upsamplers). Captions default to the empty one."""
    n = len(image_embeds)
    keys_all = image_keys(seeds)
    tokens = self.tokenize(list(prompts) if prompts is not None else [""] * n)
    rows = self.padded_batch(n, batch)
    outs = []
    for lo, hi in self._chunks(n, batch):
      outs.append(self._run_program(settings, candidates=1, trajectory=trajectory, keys=keys_all[lo:hi],
                                    tokens=tokens[lo:hi], image_embeds=image_embeds[lo:hi],
                                    x_T=None if x_T is None else x_T[lo:hi], rows=rows))
    return self._gather(outs, rows)

  @staticmethod
  def _gather(outs: list[dict], rows: int) -> dict:
    result = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
    result["rows"] = rows
    return result


# ------------------------------------------------------------------------------------------------ CLI


class _Parser(argparse.ArgumentParser):
  def error(self, message):
    raise UserError(f"{message} (see --help)")


def main(argv: Sequence[str]) -> int:
  parser = _Parser(prog="python -m unclip_jax.pipeline", description="Build unCLIP pipeline folders.")
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser("init-random", help="write a pipeline folder with random weights (tests, smoke tests)")
  p.add_argument("--preset", default="tiny", choices=("tiny", "karlo"))
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", required=True)
  a = sub.add_parser("assemble", help="write pipeline.json for existing stage folders (e.g. converted Karlo)")
  for name in STAGE_KINDS:
    a.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None,
                   required=name in REQUIRED, help=f"{STAGE_KINDS[name]} stage folder")
  a.add_argument("--preset", default="karlo", choices=("karlo", "paper"), help="sampling defaults")
  a.add_argument("--out", required=True)
  sub._name_parser_map["init-random"].error = parser.error  # noqa: SLF001
  sub._name_parser_map["assemble"].error = parser.error  # noqa: SLF001
  args = parser.parse_args(list(argv))
  if args.command == "init-random":
    out = make_random_pipeline(args.out, args.preset, args.seed)
  else:
    out = assemble(args.out, {n: getattr(args, n) for n in STAGE_KINDS}, preset=args.preset)
  print(f"pipeline: {out}")
  return 0


if __name__ == "__main__":
  run_cli(main, sys.argv[1:])
