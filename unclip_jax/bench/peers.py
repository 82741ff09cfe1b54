"""`python -m unclip_jax.bench peers`: ours against the PyTorch peers, same architectures, same weights.

    python -m unclip_jax.bench peers [--size cpu|karlo] [--rows ROW,...] [--rounds 7] [--isolate]
                                     [--json FILE]

Every row builds the peer (open_clip / diffusers, random weights) and ours from the peer's weights through
our converters (`unclip_jax.convert.clip`, `unclip_jax.convert.karlo`), then times the same work in one
process, alternating ours and the peer round by round (the order flips every round), after warm-up
(compilation for ours); the medians of `--rounds` (≥ 5) are reported. ratio = peer_s / ours_s: > 1 means
ours is faster. Rows:
  clip forward              image + text towers (ours: `ClipEmbedder`, as `python -m unclip_jax.embed` runs)
  prior train step          one optimizer step as `python -m unclip_jax.train` runs it (pmapped over all
  decoder train step        local devices, metrics read back every step on CPU)
  decoder 3x3 convolutions  the decoder's convolutions alone, to tell what bounds its train step: per UNet
                            level (resolution, width) a residual block's conv → SiLU → conv → SiLU, forward,
                            input and weight gradients at the decoder train step's batch (ours pmapped, flax
                            `nn.Conv` as the UNet builds it; the peer `torch.nn.Conv2d`)
  prior sampling 25 steps   guided (scale 4), ours `Pipeline.sample_prior`; the peer diffusers' prior loop
  decoder sampling 25 steps guided   (scale 8), ours `Pipeline.decode`; the peer diffusers' decoder loop
  pipeline 25/25/7          text → image, ours `Pipeline.generate`; the peer `UnCLIPPipeline`
The peer runs in its best mode (`--peer-mode best`): on a CPU eager with all cores or one thread (an
oversubscribed machine stalls OpenMP's barriers) and `torch.compile` at the better count, whichever is
fastest in warm-up; on a GPU, bf16 autocast or, in the rows without gradients, float16 weights (as
diffusers' pipelines run with `torch_dtype=torch.float16`), eager or compiled, whichever is fastest (ours
then computes in bfloat16). Ours runs with whatever `XLA_FLAGS` the process has (the bench CLI sets
`unclip_jax.xla_flags` defaults when none are set).
On a GPU each row also reports peak device memory: ours (JAX's peak since the process started, so
`--isolate`, one process per row, gives each row its own) and the peer's (torch's, reset for every row); JAX
takes 45% of the accelerator's memory unless `XLA_PYTHON_CLIENT_MEM_FRACTION` says otherwise, torch the
rest. `--json` is rewritten after every row. Sizes: `cpu` (a 12.9M decoder: 64/128/192 channels, 2 res
blocks, attention at 16 and 8 px, 32 px images, 128-d CLIP; a 6-layer 256-wide prior; a 64 px ViT; a 32→128
px upsampler) and `karlo` (Karlo's published sizes with ViT-L/14: for a GPU). `--size tiny` is the test
suite's wiring check.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from unclip_jax.bench import torch_peers as tp
from unclip_jax.bench.memory import gib
from unclip_jax.bench.peer_timing import run_row
from unclip_jax.bench.sizes import size_spec
from unclip_jax.errors import ArgumentParser, UserError

ROWS = ("clip forward", "prior train step", "prior sampling 25 steps", "decoder train step",
        "decoder 3x3 convolutions", "decoder sampling 25 steps guided", "pipeline 25/25/7")
ROW_KEYS = {"clip": ROWS[0], "prior_train": ROWS[1], "prior_sampling": ROWS[2], "decoder_train": ROWS[3],
            "decoder_convs": ROWS[4], "decoder_sampling": ROWS[5], "pipeline": ROWS[6]}
SHARED_MEMORY_FRACTION = ".45"  # of an accelerator's memory for JAX, the rest left to torch
STEPS = {"prior": 25, "decoder": 25, "sr": 7}
SCALES = {"prior": 4.0, "decoder": 8.0}


# ---------------------------------------------------------------------------------------- our side

def our_model_configs(spec: dict) -> dict:
  """Our model configs for a bench size, mapped from the peers' configs by the converters (no torch):
  {"clip": CLIPConfig, "prior", "decoder", "upsampler": stage.json model dicts}."""
  from unclip_jax.convert import karlo
  from unclip_jax.models import clip as clip_model

  c = spec["clip"]
  vision, text = c["vision"], c["text"]
  clip = clip_model.CLIPConfig(
      embed_dim=c["embed_dim"], image_size=vision["image_size"], patch_size=vision["patch_size"],
      vision_width=vision["width"], vision_layers=vision["layers"], vision_heads=vision["width"] // vision["head_width"],
      context_length=text["context_length"], vocab_size=text["vocab_size"], text_width=text["width"],
      text_heads=text["heads"], text_layers=text["layers"], activation="quick_gelu" if c["quick_gelu"] else "gelu")
  decoder = karlo.decoder_model_config(dict(spec["decoder"]["unet"]), Path("decoder"),
                                       dict(spec["decoder"]["text_proj"], clip_extra_context_tokens=4), Path("text_proj"))
  decoder["text_len"] = spec["prior"]["num_embeddings"]
  return {"clip": clip, "prior": karlo.prior_model_config(dict(spec["prior"]), Path("prior")), "decoder": decoder,
          "upsampler": karlo.upsampler_model_config(dict(spec["upsampler"]), Path("super_res_first"))}


def repo_configs() -> Path:
  """The repository's configs/ folder (the benchmarks train with the same configs as the trainer)."""
  path = Path(__file__).resolve().parents[2] / "configs"
  if not (path / "decoder.py").is_file():
    raise UserError(f"the benchmarks train with the repository's configs; {path} is missing (run from a checkout)")
  return path


def _stage_config(stage: str, model: dict, batch: int, dtype: str):
  """configs/<stage>.py:karlo (the repository's config, as `python -m unclip_jax.train` loads it) with
  the converted model, its compute dtype and the bench's global batch."""
  import ml_collections

  from unclip_jax.train import config_loader

  config = config_loader.load_config_file(f"{repo_configs() / stage}.py:karlo")
  config.model = ml_collections.ConfigDict(dict(model, dtype=dtype, remat=False))
  config.train.batch_size, config.train.steps = batch, 1_000_000
  return config


class OursTrain:
  """A stage's pmapped train step as the trainer runs it: replicated state, the batch split over the local
  devices, the metrics read back to the host after every step (the loop's NaN guard)."""

  def __init__(self, config, params, extra_fill: dict, batch: dict[str, np.ndarray]):
    import jax

    from unclip_jax.train import loop, optim
    from unclip_jax.train.stages import get_stage
    from unclip_jax.train.state import TrainState

    self.stage = stage = get_stage(config)
    devices = jax.local_devices()
    n = len(devices)
    if int(config.train.batch_size) % n:
      raise UserError(f"batch {config.train.batch_size} does not split over {n} devices")
    tx = optim.make_optimizer(config.optim, int(config.train.steps))
    extra = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), stage.abstract_extra())
    extra.update(extra_fill)
    state = TrainState.create(jax.tree.map(np.asarray, params), tx, ema=float(config.optim.ema_decay) > 0,
                              extra=extra)
    mesh = jax.sharding.Mesh(np.asarray(devices), ("data",))
    self.state = jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    self.step = loop.make_train_step(stage, tx, config, devices)
    self.batch = {k: v.reshape((n, v.shape[0] // n) + v.shape[1:]) for k, v in batch.items()}
    self.host_value = loop.host_value

  def __call__(self):
    self.state, metrics = self.step(self.state, self.batch)
    return {k: float(self.host_value(v)) for k, v in metrics.items()}


def _sampling(stage: str):
  from unclip_jax.diffusion.config import diffusion_config
  from unclip_jax.pipeline import StageSampling

  s = diffusion_config(stage, "karlo").sample.to_dict()
  s["steps"] = str(STEPS.get(stage.split("_")[0], STEPS["sr"]))
  if stage in SCALES:
    s["guidance_scale"] = SCALES[stage]
  return StageSampling.from_dict(s)


def our_pipeline(models: dict, dtype: str | None):
  """A `Pipeline` over the converted weights (stage configs as the Karlo converter writes them)."""
  from unclip_jax.diffusion.config import diffusion_config
  from unclip_jax.pipeline.engine import Component, Pipeline

  comps = {"clip": Component("clip", models["clip_config"].to_dict(), models["clip"])}
  for name, kind, stage in (("prior", "prior", "prior"), ("decoder", "decoder", "decoder"),
                            ("sr_64_256", "upsampler", "sr_64_256"), ("sr_64_256_last", "upsampler", "sr_64_256")):
    config = {"stage": stage, "model": models[f"{kind}_model"], "diffusion": diffusion_config(stage, "karlo").to_dict()}
    comps[name] = Component(kind, config, models[name])
  sampling = {s: _sampling(s) for s in ("prior", "decoder", "sr_64_256")}
  return Pipeline(comps, sampling, name="bench peers", dtype=dtype, log=lambda m: None)


def convert_models(spec: dict, clip, prior, unet, proj, sr_first, sr_last) -> dict:
  """Our parameter trees and model configs from the peer models, through the converters."""
  from unclip_jax.convert import clip as convert_clip
  from unclip_jax.convert import karlo
  from unclip_jax.models import registry

  out = {}
  if clip is not None:
    sd = tp.state_dict(clip)
    vh, th = spec["heads"]
    out["clip_config"] = convert_clip.infer_config(sd, source="open_clip", vision_heads=vh, text_heads=th,
                                                   activation="quick_gelu" if spec["clip"]["quick_gelu"] else "gelu")
    out["clip"] = convert_clip.convert_state_dict(sd, out["clip_config"])
  if prior is not None:
    m = karlo.prior_model_config(dict(prior.config), Path("prior"))
    out["prior_model"], out["prior"] = m, karlo.convert_state_dict(tp.state_dict(prior),
                                                                  registry.abstract_params("prior", m))
  if unet is not None:
    m = karlo.decoder_model_config(dict(unet.config), Path("decoder"), dict(proj.config), Path("text_proj"))
    m["text_len"] = spec["prior"]["num_embeddings"]
    abstract = registry.abstract_params("decoder", m)
    out["decoder_model"] = m
    out["decoder"] = {"unet": karlo.convert_state_dict(tp.state_dict(unet), abstract["unet"]),
                      "text_proj": karlo.convert_state_dict(tp.state_dict(proj), abstract["text_proj"])}
  if sr_first is not None:
    m = karlo.upsampler_model_config(dict(sr_first.config), Path("super_res_first"))
    abstract = registry.abstract_params("upsampler", m)
    out["upsampler_model"] = m
    out["sr_64_256"], out["sr_64_256_last"] = (karlo.convert_state_dict(tp.state_dict(t), abstract)
                                               for t in (sr_first, sr_last))
  return out


def _text(rng, n: int, length: int, d: int) -> dict[str, np.ndarray]:
  """Random text conditioning: embeddings, per-token states, a mask true up to a per-row length."""
  lengths = rng.integers(2, length + 1, n)
  return {"text_embedding": rng.normal(size=(n, d)).astype(np.float32),
          "text_states": rng.normal(size=(n, length, d)).astype(np.float32),
          "text_mask": np.arange(length)[None] < lengths[:, None]}


class Row:
  """One row: `ours()` and the peer's work, `make_peer(peer)` → callable, over the torch `modules`."""

  def __init__(self, name: str, ours: Callable, make_peer: Callable, modules: list, info: dict,
               inference: bool = True):
    self.name, self.ours, self.make_peer, self.modules, self.info = name, ours, make_peer, modules, info
    self.inference = inference  # no gradients: the peer may run in float16 (`Peer(half=True)`)


def _train_row(name: str, stage: str, spec: dict, dtype: str) -> Row:
  from unclip_jax import diffusion as D

  rng = np.random.default_rng(1)
  d, length = spec["prior"]["embedding_dim"], spec["prior"]["num_embeddings"]
  null = {k: v[0] for k, v in _text(rng, 1, length, d).items()}
  if stage == "prior":
    prior = tp.build_prior(spec["prior"], seed=2)
    models = convert_models(spec, None, prior, None, None, None, None)
    config = _stage_config("prior", models["prior_model"], spec["batch"]["prior_train"], dtype)
    params, fill = models["prior"]["params"], {"stats": models["prior"]["stats"], "null_text": null}
    modules = [prior]
  else:
    unet, proj = tp.build_decoder(spec["decoder"], seed=3)
    models = convert_models(spec, None, None, unet, proj, None, None)
    config = _stage_config("decoder", models["decoder_model"], spec["batch"]["decoder_train"], dtype)
    params, fill, modules = models["decoder"], {"null_text": null}, [unet, proj]
  n = int(config.train.batch_size)
  batch = _text(rng, n, length, d)
  batch["image_embedding"] = rng.normal(size=(n, d)).astype(np.float32)
  if stage == "decoder":
    s = int(config.model.image_size)
    batch["image"] = rng.uniform(-1, 1, (n, s, s, 3)).astype(np.float32)
  ours = OursTrain(config, params, fill, batch)
  missing = set(ours.stage.batch_spec(1)) - set(batch)
  if missing:
    raise UserError(f"bench peers does not know how to fill the {stage} batch fields {sorted(missing)}")
  process = D.GaussianDiffusion.from_config(config.diffusion)

  def make_peer(peer: tp.Peer):
    sched = tp.Schedule(peer, process)
    t_null = {k: peer.tensor(v) for k, v in null.items()}
    t_batch = {k: peer.tensor(v.transpose(0, 3, 1, 2) if k == "image" else v) for k, v in batch.items()}
    if stage == "prior":
      loss = tp.prior_loss(peer, modules[0], sched, t_null, float(config.train.text_drop))
    else:
      loss = tp.decoder_loss(peer, *modules, sched, t_null, float(config.train.text_drop),
                             float(config.train.clip_emb_drop))
    step = tp.TrainStep(peer, modules, loss, config.optim)
    return lambda: step(t_batch)
  return Row(name, ours, make_peer, modules, {"batch": n, "parameters": tp.describe_modules(*modules)},
             inference=False)


def conv_levels(spec: dict) -> list[tuple[int, int]]:
  """(resolution, channels) of each level of a bench size's decoder UNet."""
  unet = spec["decoder"]["unet"]
  return [(int(unet["sample_size"]) >> i, int(c)) for i, c in enumerate(unet["block_out_channels"])]


def _conv_row(name: str, spec: dict, dtype: str) -> Row:
  import jax
  import jax.numpy as jnp

  from unclip_jax.models.unet import conv

  levels = conv_levels(spec)
  model = tp.build_conv_levels(levels, seed=7)
  sd = tp.state_dict(model)
  params = [{"kernel": sd[f"convs.{i}.weight"].transpose(2, 3, 1, 0), "bias": sd[f"convs.{i}.bias"]}
            for i in range(2 * len(levels))]
  b = spec["batch"]["decoder_train"]
  n = jax.local_device_count()
  if b % n:
    raise UserError(f"batch {b} does not split over {n} devices")
  rng = np.random.default_rng(7)
  xs = [rng.normal(size=(b, s, s, c)).astype(np.float32) for s, c in levels]
  layers = [conv(c, 3, jnp.dtype(dtype)) for _, c in levels for _ in range(2)]

  def loss(params, xs):
    total = 0.0
    for i, x in enumerate(xs):
      for j in (2 * i, 2 * i + 1):
        x = jax.nn.silu(layers[j].apply({"params": params[j]}, x)).astype(jnp.float32)
      total = total + jnp.mean(x * x)
    return total

  def per_device(params, xs):  # the mean over the global batch: the per-device means averaged
    g_params, g_xs = jax.grad(loss, argnums=(0, 1))(params, xs)
    return jax.lax.pmean(g_params, "batch"), jax.tree.map(lambda g: g / n, g_xs)

  step = jax.pmap(per_device, "batch", in_axes=(None, 0))
  params = jax.tree.map(jnp.asarray, params)
  shards = [jnp.asarray(x.reshape((n, b // n) + x.shape[1:])) for x in xs]

  def ours():
    return jax.block_until_ready(step(params, shards))

  def make_peer(peer: tp.Peer):
    t_xs = [peer.tensor(x.transpose(0, 3, 1, 2)).requires_grad_(True) for x in xs]
    run = tp.conv_gradients(peer, model)
    return lambda: run(t_xs)
  return Row(name, ours, make_peer, [model], {"batch": b, "parameters": tp.describe_modules(model),
                                              "levels": [f"{s}x{s}x{c}" for s, c in levels]}, inference=False)


def _sampling_row(name: str, which: str, spec: dict, dtype: str | None) -> Row:
  from unclip_jax.pipeline import TextEncoding, image_keys

  torch_models = dict(clip=tp.build_clip(spec["clip"], seed=0), prior=tp.build_prior(spec["prior"], seed=2))
  torch_models["unet"], torch_models["proj"] = tp.build_decoder(spec["decoder"], seed=3)
  if which == "pipeline":
    torch_models["sr_first"] = tp.build_upsampler(spec["upsampler"], seed=4)
    torch_models["sr_last"] = tp.build_upsampler(spec["upsampler"], seed=5)
  else:  # the pipeline object needs an upsampler; a one-level stand-in, never run in these rows
    small = dict(spec["upsampler"], block_out_channels=spec["upsampler"]["block_out_channels"][:1],
                 down_block_types=("ResnetDownsampleBlock2D",), up_block_types=("ResnetUpsampleBlock2D",))
    torch_models["sr_first"] = torch_models["sr_last"] = tp.build_upsampler(small, seed=4)
  for m in torch_models.values():
    m.eval()
  models = convert_models(spec, *(torch_models[k] for k in ("clip", "prior", "unet", "proj", "sr_first", "sr_last")))
  pipe = our_pipeline(models, dtype)
  settings = pipe.settings()
  rng = np.random.default_rng(5)
  d, length = spec["prior"]["embedding_dim"], spec["prior"]["num_embeddings"]
  b = spec["batch"]["prior_sample" if which == "prior" else "decoder_sample" if which == "decoder" else "pipeline"]
  keys = image_keys(list(range(b)))
  uncond = dict(zip(("text_embedding", "text_states", "text_mask"), pipe._uncond_row()))  # noqa: SLF001
  text = _text(rng, b, length, d)
  both = {k: np.concatenate([np.repeat(uncond[k], b, 0), text[k]]) for k in text}  # diffusers: [uncond; cond]
  enc = TextEncoding(text["text_embedding"], text["text_states"], text["text_mask"])
  prompts = [f"a photo of object number {i}" for i in range(b)]
  emb = rng.normal(size=(b, d)).astype(np.float32)
  size = int(models["decoder_model"]["image_size"])
  if which == "prior":
    ours = lambda: pipe.sample_prior(enc, keys, settings["prior"])  # noqa: E731
    modules = [torch_models["prior"]]
  elif which == "decoder":
    ours = lambda: pipe.decode(emb, enc, keys, settings["decoder"])  # noqa: E731
    modules = [torch_models["unet"], torch_models["proj"]]
  else:
    ours = lambda: pipe.generate(prompts, list(range(b)), settings)  # noqa: E731
    modules = [torch_models[k] for k in ("clip", "prior", "unet", "proj", "sr_first", "sr_last")]

  def make_peer(peer: tp.Peer):
    t_text = {k: peer.tensor(v) for k, v in both.items()}
    if which == "prior":
      run = tp.prior_sampler(peer, torch_models["prior"], STEPS["prior"], SCALES["prior"])
      latents = peer.tensor(rng.normal(size=(b, d)).astype(np.float32))
      return lambda: run(t_text, latents)
    if which == "decoder":
      run = tp.decoder_sampler(peer, torch_models["unet"], torch_models["proj"], STEPS["decoder"], SCALES["decoder"])
      latents, t_emb = peer.tensor(rng.normal(size=(b, 3, size, size)).astype(np.float32)), peer.tensor(emb)
      return lambda: run(t_emb, t_text, latents)
    run = tp.unclip_pipeline(peer, *modules, context_length=length)
    return lambda: run(prompts, 0, (STEPS["prior"], STEPS["decoder"], STEPS["sr"]), (SCALES["prior"],
                                                                                        SCALES["decoder"]))
  return Row(name, ours, make_peer, modules, {"batch": b, "parameters": tp.describe_modules(*modules)})


def _clip_row(name: str, spec: dict, dtype: str | None) -> Row:
  import jax

  from unclip_jax.models import clip as clip_model
  from unclip_jax.models.clip_encoder import ClipEmbedder
  from unclip_jax.models.tokenizer import default_tokenizer

  clip = tp.build_clip(spec["clip"], seed=0)
  models = convert_models(spec, clip, None, None, None, None, None)
  config = models["clip_config"].replace(dtype=dtype) if dtype else models["clip_config"]
  b, s = spec["batch"]["clip"], config.image_size
  rng = np.random.default_rng(6)
  pixels = rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8)
  tokens = np.asarray(default_tokenizer()([f"a photo of a {i} red square" for i in range(b)], config.context_length),
                      np.int32)
  embed = ClipEmbedder(config, jax.tree.map(np.asarray, models["clip"]), b)
  normalised = np.asarray(clip_model.normalize_images(pixels, config)).transpose(0, 3, 1, 2)

  def make_peer(peer: tp.Peer):
    run = tp.clip_forward(peer, clip)
    images, ids = peer.tensor(normalised), peer.tensor(tokens.astype(np.int64))
    return lambda: run(images, ids)
  return Row(name, lambda: embed(pixels, tokens), make_peer, [clip], {"batch": b, "parameters":
                                                                        tp.describe_modules(clip)})


def build_row(key: str, spec: dict, gpu: bool) -> Row:
  name = ROW_KEYS[key]
  if key == "clip":
    return _clip_row(name, spec, "bfloat16" if gpu else None)
  if key == "decoder_convs":
    return _conv_row(name, spec, "bfloat16" if gpu else "float32")
  if key.endswith("_train"):
    return _train_row(name, key.split("_")[0], spec, "bfloat16" if gpu else "float32")
  return _sampling_row(name, key.split("_")[0], spec, "bfloat16" if gpu else None)


def environment() -> dict:
  import jax

  torch = tp.import_peer("torch")
  devices = jax.local_devices()
  load = os.getloadavg() if hasattr(os, "getloadavg") else None
  return {"date": time.strftime("%Y-%m-%d"), "host": platform.node(), "machine": platform.processor() or platform.machine(),
          "cpu_count": os.cpu_count(), "jax": jax.__version__, "torch": torch.__version__,
          "diffusers": tp.import_peer("diffusers").__version__, "backend": jax.default_backend(),
          "devices": len(devices), "device_kind": devices[0].device_kind, "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "load_average": [round(x, 2) for x in load] if load else None}


def table(results: list[dict]) -> str:
  lines = [f"{'name':34s} {'ours_s':>9s} {'peer_s':>9s} {'ratio':>6s}  peer mode"]
  for r in results:
    lines.append(f"{r['name']:34s} {r['ours_s']:9.4f} {r['peer_s']:9.4f} {r['ratio']:6.2f}  {r['peer_mode']}")
  return "\n".join(lines)


def _parse(argv):
  p = ArgumentParser(prog="python -m unclip_jax.bench peers", description=__doc__.splitlines()[0])
  p.add_argument("--size", default="cpu", choices=("cpu", "karlo", "tiny"))
  p.add_argument("--rows", default=",".join(ROW_KEYS), help="comma-separated: " + ", ".join(ROW_KEYS))
  p.add_argument("--rounds", type=int, default=7, help="alternating timed rounds after warm-up (medians; >= 5)")
  p.add_argument("--peer-mode", default="best", choices=("best", "eager", "compile", "fp16"),
                 help="PyTorch eager, torch.compile, eager with float16 weights (rows without gradients), or the "
                      "fastest of them (with the better CPU thread count; float16 only on a GPU)")
  p.add_argument("--isolate", action="store_true",
                 help="run each row in its own process: its own peak memory (JAX cannot reset the count), and a "
                      "row that fails or runs out of memory does not stop the others (use it on a GPU)")
  p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one row, in a child process
  p.add_argument("--json", default=None, help="also write the results to this JSON file")
  return p.parse_args(argv)


def main(argv) -> int:
  args = _parse(list(argv))
  keys = [k.strip() for k in args.rows.split(",") if k.strip()]
  unknown = [k for k in keys if k not in ROW_KEYS]
  if unknown or not keys:
    raise UserError(f"unknown --rows {unknown or args.rows!r}; choose from {', '.join(ROW_KEYS)}")
  if args.rounds < (1 if args.size == "tiny" else 5):
    raise UserError(f"--rounds must be at least 5 (medians of 5 or more), got {args.rounds}")
  # JAX and torch share one accelerator here: unless told otherwise JAX takes 45% of its memory, not 75%.
  os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", SHARED_MEMORY_FRACTION)
  if args.isolate and not args.worker:
    return _isolated(args, keys)
  spec = size_spec(args.size)
  env = environment()
  print(f"bench peers --size {args.size}: jax {env['jax']} on {env['devices']} x {env['device_kind']} "
        f"({env['backend']}), torch {env['torch']}, diffusers {env['diffusers']}; XLA_FLAGS={env['xla_flags']!r}; "
        f"load average {env['load_average']}", flush=True)
  gpu = env["backend"] == "gpu"
  results = []
  for key in keys:
    print(f"{ROW_KEYS[key]}: building and warming up", flush=True)
    row = build_row(key, spec, gpu)
    result = run_row(row, args.rounds, args.peer_mode, log=lambda m: print(m, flush=True))
    memory = (f"; peak memory ours {gib(result['ours_peak_bytes'])}, peer {gib(result['peer_peak_bytes'])}"
              if gpu else "")
    print(f"  ours {result['ours_s']:.4f} s, peer {result['peer_s']:.4f} s, ratio {result['ratio']:.2f}{memory}",
          flush=True)
    results.append(result)
    del row
    if args.worker:  # the parent reads the row from this last line
      print(json.dumps({"env": env, "row": result}), flush=True)
      return 0
    if args.json and len(results) < len(keys):  # a run stopped part-way keeps the rows it finished
      _write_json(args.json, args.size, env, results, complete=False)
  env["load_average_end"] = environment()["load_average"]
  print(table(results))
  if args.json:
    _write_json(args.json, args.size, env, results, complete=True)
  return 0


def _isolated(args, keys: list[str]) -> int:
  """`--isolate`: every row in a child process (`--worker`), its output relayed, its result collected; a
  row whose process fails is reported as such and the next one runs. Exit 1 if any row failed."""
  env, results = {}, []
  for key in keys:
    cmd = [sys.executable, "-m", "unclip_jax.bench", "peers", "--worker", "--size", args.size, "--rows", key,
           "--rounds", str(args.rounds), "--peer-mode", args.peer_mode]
    try:
      child_env, result = _run_child(cmd, ROW_KEYS[key])
      env = env or child_env
    except UserError as e:
      print(f"{ROW_KEYS[key]}: {e}", flush=True)
      result = {"name": ROW_KEYS[key], "error": str(e)}
    results.append(result)
    if args.json:
      _write_json(args.json, args.size, dict(env, isolated=True), results, complete=len(results) == len(keys))
  print(table([r for r in results if "error" not in r]))
  failed = [r["name"] for r in results if "error" in r]
  if failed:
    print(f"failed: {', '.join(failed)}")
  return 1 if failed else 0


def _run_child(cmd: list[str], name: str) -> tuple[dict, dict]:
  """Runs one row's process, relaying its output (its stderr goes straight through); returns (env, row)."""
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
  last = None
  for line in proc.stdout:
    if line.startswith("{"):
      last = line
    else:
      print(line, end="", flush=True)
  code = proc.wait()
  if code or last is None:
    raise UserError(f"the process of the {name!r} row exited with status {code} (its error is printed above)")
  report = json.loads(last)
  return report["env"], report["row"]


def _write_json(path: str, size: str, env: dict, results: list[dict], complete: bool) -> None:
  from unclip_jax.io import write_text_atomic

  write_text_atomic(path, json.dumps({"benchmark": "peers", "size": size, **env, "complete": complete,
                                      "rows": results}, indent=2))
