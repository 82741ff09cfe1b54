"""`python -m unclip_jax.convert karlo KARLO_DIR --out OUT [--variations VARIATIONS_DIR]`: a released Karlo
folder → a complete pipeline folder that `python -m unclip_jax.sample --checkpoint OUT` samples.

KARLO_DIR is a diffusers `UnCLIPPipeline` folder (kakaobrain/karlo-v1-alpha): text_encoder/ (transformers
CLIPTextModelWithProjection) and tokenizer/, prior/, text_proj/, decoder/, super_res_first/,
super_res_last/, prior_scheduler/, decoder_scheduler/, super_res_scheduler/. OUT gets clip/ (the text
tower, `convert.hf_clip`), prior/, decoder/, sr_64_256/, sr_64_256_last/ (`convert.karlo`) and
pipeline.json, whose sampling settings are UnCLIPPipeline's defaults (steps 25 / 25 / 7, guidance 4 / 8)
with each stage's x0 clamp read from its scheduler config (the prior's clip_sample_range is 5).

VARIATIONS_DIR (kakaobrain/karlo-v1-alpha-image-variations, an `UnCLIPImageVariationPipeline` folder) adds
the image tower from its image_encoder/ (CLIPVisionModelWithProjection) and feature_extractor/ (pixel
mean/std, crop size), so `sample variations` runs. diffusers built that folder from the text-to-image one,
so its text encoder, decoder, text_proj and super-resolution models must be the same tensors as
KARLO_DIR's; any difference is an error. Without it the CLIP is a text encoder only.

Everything is checked (configs, tokenizer ids, tensor shapes) before any tensor is loaded, and the folder
is written through `pipeline.folder.write_folder`: it appears whole or not at all.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from unclip_jax.convert import hf_clip
from unclip_jax.convert.hf_tokenizer import check_tokenizer
from unclip_jax.convert.karlo import load_job, read_config, stage_jobs
from unclip_jax.convert.weights import DIFFUSERS, TRANSFORMERS, WeightFiles
from unclip_jax.errors import ArgumentParser, UserError, check_writable
from unclip_jax.pipeline.folder import check_new_folder, write_folder, write_pipeline_json
from unclip_jax.pipeline.settings import StageSampling, check_sampling

# our stage -> (scheduler folder, variance_type, prediction_type, UnCLIPPipeline's steps, guidance scale)
SCHEDULERS = {"prior": ("prior_scheduler", "fixed_small_log", "sample", "25", 4.0),
              "decoder": ("decoder_scheduler", "learned_range", "epsilon", "25", 8.0),
              "sr_64_256": ("super_res_scheduler", "fixed_small_log", "epsilon", "7", 1.0)}
SHARED = ("text_encoder", "text_proj", "decoder", "super_res_first", "super_res_last")  # same in both folders
_VERSION_KEYS = {"_diffusers_version", "transformers_version", "_name_or_path", "architectures", "dtype",
                 "torch_dtype"}


def sampling_defaults(src: Path) -> dict[str, dict]:
  """pipeline.json's `sampling` from the scheduler configs (UserError naming a file we cannot follow)."""
  out = {}
  for stage, (folder, variance, prediction, steps, guidance) in SCHEDULERS.items():
    cfg = read_config(src / folder, "scheduler_config.json")
    file = src / folder / "scheduler_config.json"
    want = {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2", "variance_type": variance,
            "prediction_type": prediction}
    for key, value in want.items():
      if cfg.get(key, value) != value:
        raise UserError(f"{file}: {key} {cfg[key]!r} differs from Karlo's {value!r}, which the converted "
                        f"{stage} stage is trained for")
    clip = float(cfg.get("clip_sample_range", 1.0)) if cfg.get("clip_sample", True) else 0.0
    s = check_sampling(StageSampling(steps=steps, sampler="ddpm", guidance_scale=guidance, clip_x0=clip), stage)
    out[stage] = s.to_dict()
  return out


def _comparable(cfg: dict) -> dict:
  return {k: v for k, v in cfg.items() if k not in _VERSION_KEYS}


def check_same_components(src: Path, variations: Path, log: Callable[[str], None]) -> None:
  """The variations folder's shared components equal KARLO_DIR's (configs, then tensor by tensor)."""
  for name in SHARED:
    a_cfg, b_cfg = read_config(src / name), read_config(variations / name)
    if _comparable(a_cfg) != _comparable(b_cfg):
      key = sorted(k for k in set(_comparable(a_cfg)) | set(_comparable(b_cfg)) if a_cfg.get(k) != b_cfg.get(k))[0]
      raise UserError(f"{variations / name}/config.json differs from {src / name}'s ({key}); --variations needs "
                      "the image-variations folder made from this text-to-image folder")
    names = TRANSFORMERS if name == "text_encoder" else DIFFUSERS
    a, b = WeightFiles(src / name, names), WeightFiles(variations / name, names)
    if a.shapes() != b.shapes():
      raise UserError(f"{b.path} holds other tensors than {a.path}")
    theirs = dict(b.tensors())
    for key, value in a.tensors():
      if not np.array_equal(value, theirs.pop(key)):
        raise UserError(f"{b.path}: tensor {key!r} differs from {a.path}'s; --variations needs the "
                        "image-variations folder made from this text-to-image folder")
    log(f"  {name}: same as in {variations.name}")


def plan_clip(src: Path, variations: Path | None):
  """(CLIPConfig, [WeightFiles]) for the text tower (and the image tower), tokenizer checked; no tensor read."""
  text_dir = src / "text_encoder"
  text_files = WeightFiles(text_dir, TRANSFORMERS)
  files, shapes = [text_files], dict(text_files.shapes())
  vision = {}
  if variations is not None:
    image_dir, fx_dir = variations / "image_encoder", variations / "feature_extractor"
    vision_files = WeightFiles(image_dir, TRANSFORMERS)
    files.append(vision_files)
    shapes.update(vision_files.shapes())
    vision = dict(vision_cfg=read_config(image_dir), vision_file=image_dir / "config.json",
                  processor=read_config(fx_dir, "preprocessor_config.json"),
                  processor_file=fx_dir / "preprocessor_config.json")
  config = hf_clip.clip_config(read_config(text_dir), text_dir / "config.json", **vision)
  hf_clip.check(shapes, config, " + ".join(str(f.path) for f in files))
  return config, files


def convert(src: str | os.PathLike, out: str | os.PathLike, *, variations: str | os.PathLike | None = None,
            log: Callable[[str], None] = print) -> dict:
  """Converts a Karlo folder into the pipeline folder `out` (new or empty); returns a summary dict."""
  from unclip_jax.checkpoint import save_stage
  from unclip_jax.models.clip import count_params

  src = Path(src)
  if not src.is_dir():
    raise UserError(f"Karlo folder {src} does not exist")
  variations = Path(variations) if variations is not None else None
  if variations is not None and not variations.is_dir():
    raise UserError(f"image-variations folder {variations} does not exist")
  out = check_new_folder(out)
  log(f"checking {src}" + (f" and {variations}" if variations else ""))
  clip_config, clip_files = plan_clip(src, variations)
  log("  " + check_tokenizer(src / "tokenizer", clip_config.context_length))
  jobs = stage_jobs(src)
  sampling = sampling_defaults(src)
  if variations is not None:
    check_same_components(src, variations, log)
  summary = {"clip": {"towers": "text + image" if clip_config.image_tower else "text",
                      "files": [f.name for f in clip_files]}}

  def build(staging: Path) -> None:
    tensors = {}
    for files in clip_files:
      tensors.update(files.tensors())
    params = hf_clip.convert(tensors, clip_config)
    del tensors
    save_stage(staging / "clip", params, kind="clip", config=clip_config.to_dict(),
               extra={"converted_from": str(src.absolute()), "source": "karlo (transformers CLIP)"})
    summary["clip"]["parameters"] = count_params(params)
    log(f"  clip: {summary['clip']['towers']} tower(s), {count_params(params):,} parameters "
        f"from {', '.join(summary['clip']['files'])}")
    del params
    for name, kind, config, parts in jobs:
      params = load_job(parts)
      save_stage(staging / name, params, kind=kind, config=config, extra={"converted_from": str(src.absolute())})
      summary[name] = {"parameters": count_params(params), "files": [p[0].name for p in parts]}
      log(f"  {name}: {count_params(params):,} parameters from {', '.join(summary[name]['files'])}")
      del params
    stages = {"clip": "clip", **{name: name for name, *_ in jobs}}
    write_pipeline_json(staging, stages, sampling, "karlo",
                        {"source": {"karlo": str(src.absolute()),
                                    **({"variations": str(variations.absolute())} if variations else {})}})

  log(f"writing {out}")
  write_folder(out, build)
  summary["sampling"] = sampling
  return summary


def main(argv) -> int:
  parser = ArgumentParser(prog="python -m unclip_jax.convert karlo",
                          description="Convert a released Karlo folder (diffusers UnCLIPPipeline layout) into a "
                                      "unclip_jax pipeline folder: CLIP, prior, decoder, sr_64_256, sr_64_256_last.")
  parser.add_argument("karlo_dir", help="folder with text_encoder/ tokenizer/ prior/ text_proj/ decoder/ "
                                        "super_res_first/ super_res_last/ and the *_scheduler/ folders")
  parser.add_argument("--out", required=True, help="the pipeline folder to write (must be new or empty)")
  parser.add_argument("--variations", metavar="DIR",
                      help="karlo-v1-alpha-image-variations folder: adds its image encoder, so `sample variations` "
                           "works")
  args = parser.parse_args(list(argv))
  check_writable(args.out, "--out")
  summary = convert(args.karlo_dir, args.out, variations=args.variations)
  total = sum(v["parameters"] for k, v in summary.items() if isinstance(v, dict) and "parameters" in v)
  s = summary["sampling"]
  print(f"wrote {args.out}: {total:,} parameters; CLIP {summary['clip']['towers']}; sampling prior "
        f"{s['prior']['steps']} steps (guidance {s['prior']['guidance_scale']:g}, x0 clamp {s['prior']['clip_x0']:g}), "
        f"decoder {s['decoder']['steps']} (guidance {s['decoder']['guidance_scale']:g}), "
        f"super-resolution {s['sr_64_256']['steps']}")
  return 0
