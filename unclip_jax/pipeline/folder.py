"""The pipeline folder format (docs/architecture.md, "Folders"): reading and checking it, assembling one
from stage checkpoints, and restoring a stage's parameter tree.

    DIR/pipeline.json   {"kind": "unclip_pipeline", "format": 1, "preset", "stages": {name: relative path},
                         "sampling": {stage: {steps, sampler, eta, guidance_scale, clip_x0, dynamic_threshold,
                                              candidates}}}
    DIR/clip/ prior/ decoder/ sr_64_256/ [sr_64_256_last/] [sr_256_1024/] [rerank_clip/]   stage checkpoints
                                                                                     (checkpoint.py)
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable

from unclip_jax.checkpoint import load_stage_params, read_stage, reuse_identical_params, save_stage
from unclip_jax.diffusion.config import diffusion_config
from unclip_jax.errors import UserError
from unclip_jax.io import write_text_atomic
from unclip_jax.models import registry
from unclip_jax.pipeline.settings import DIFFUSION_STAGES, StageSampling, apply_overrides, check_sampling

PIPELINE_FILE = "pipeline.json"
# The demo pipeline shipped inside the package (launch/train_demo.sh trains it): the default --checkpoint.
DEMO_PIPELINE = Path(__file__).resolve().parents[1] / "assets" / "demo"
FORMAT_VERSION = 1
# stage name -> stage checkpoint kind; required stages first. `rerank_clip`: a CLIP that only rates the decoder's
# candidates against the caption (in place of the pipeline's CLIP, which the prior and decoder are conditioned on).
STAGE_KINDS = {"clip": "clip", "prior": "prior", "decoder": "decoder", "sr_64_256": "upsampler",
               "sr_64_256_last": "upsampler", "sr_256_1024": "upsampler", "rerank_clip": "clip"}
REQUIRED = ("clip", "prior", "decoder", "sr_64_256")


def _read_meta(folder: Path) -> dict:
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
  return meta


def read_pipeline(folder: str | os.PathLike) -> dict:
  """Reads and checks pipeline.json and every stage folder's kind; UserError naming what is wrong.

  Returns {"meta": pipeline.json, "paths": {stage: folder}, "stages": {stage: stage.json},
  "sampling": {diffusion stage: StageSampling}} (each stage's own defaults under pipeline.json's)."""
  folder = Path(folder)
  meta = _read_meta(folder)
  paths, stage_meta = {}, {}
  for name, rel in meta["stages"].items():
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
      raise UserError(f"{folder / PIPELINE_FILE}: bad sampling settings for {stage} ({e})") from None
  return {"meta": meta, "paths": paths, "stages": stage_meta, "sampling": sampling}


def write_pipeline_json(out: Path, stages: dict[str, str], sampling: dict, preset: str, extra=None) -> None:
  meta = {"kind": "unclip_pipeline", "format": FORMAT_VERSION, "preset": preset, "stages": stages,
          "sampling": sampling, **(extra or {})}
  write_text_atomic(out / PIPELINE_FILE, json.dumps(meta, indent=2, sort_keys=True))


def assemble(out: str | os.PathLike, stage_dirs: dict[str, str | None], *, preset: str = "karlo",
             sampling: dict | None = None) -> Path:
  """Writes `out/pipeline.json` pointing at existing stage folders (stored relative to `out`; no copy).

  Sampling defaults are the Karlo ones (25/25/7 steps, guidance 4 and 8) unless `preset` is "paper".
  """
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
  write_pipeline_json(out, rel, defaults, preset)
  return out


def load_stage_tree(path: Path, kind: str, meta: dict, *, ema: bool, log: Callable[[str], None], abstract=None):
  """Restores a stage's parameter tree → (tree, "ema" | "params"). A checkpoint whose stage.json says
  `"ema": true` stores {"params": TREE, "ema": TREE}; `ema` picks the EMA copy (falling back to params,
  with a message, where there is none). `abstract` (shapes and dtypes) is the tree the caller needs, such
  as a training run's own parameters; by default, the one the checkpoint's config builds."""
  if abstract is None:
    try:
      abstract = registry.abstract_params(kind, registry.model_dict(kind, meta["config"]))
    except (KeyError, TypeError, ValueError) as e:
      raise UserError(f"{path}/stage.json has an invalid {kind} config ({type(e).__name__}: {e})") from None
  if meta.get("ema"):
    tree = load_stage_params(path, {"params": abstract, "ema": abstract}, kind=kind)
    return tree["ema" if ema else "params"], ("ema" if ema else "params")
  if meta.get("weights") == "ema":  # a packed stage (`pack`): its only tree is the EMA one
    if not ema:
      log(f"{path.name}: this packed checkpoint holds only its EMA weights; --no-ema does not apply")
    return load_stage_params(path, abstract, kind=kind), "ema"
  if ema and kind != "clip":
    log(f"{path.name}: no EMA weights in this checkpoint; using its params")
  return load_stage_params(path, abstract, kind=kind), "params"


def check_new_folder(out: str | os.PathLike) -> Path:
  """`out` as a Path; a UserError if it exists with something in it (nothing is ever overwritten)."""
  out = Path(out)
  if out.exists() and any(out.iterdir()):
    raise UserError(f"{out} already exists and is not empty; choose another --out folder")
  return out


def write_folder(out: Path, build: Callable[[Path], None]) -> Path:
  """Runs `build(staging)` on a fresh folder beside `out`, then renames it into place: the folder appears
  whole or not at all."""
  staging = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
  try:
    staging.mkdir(parents=True)
    build(staging)
    if out.exists():
      out.rmdir()
    os.replace(staging, out)
  finally:
    if staging.exists():
      shutil.rmtree(staging, ignore_errors=True)
  return out


def default_pipeline() -> Path:
  """The packaged demo pipeline, what CLIs use when no --checkpoint is given."""
  if not (DEMO_PIPELINE / PIPELINE_FILE).is_file():
    raise UserError(f"no --checkpoint given and this install has no demo pipeline ({DEMO_PIPELINE}); pass "
                    "--checkpoint DIR (a pipeline folder), or train one with launch/train_demo.sh")
  return DEMO_PIPELINE


def pack(src: str | os.PathLike, out: str | os.PathLike, *, storage_dtype: str = "float16", ema: bool = True,
         meta: dict | None = None, sampling: dict | None = None, reuse: str | os.PathLike | None = None,
         log: Callable[[str], None] = print) -> Path:
  """Copies pipeline `src` into a self-contained folder `out` for shipping: each stage holds only the
  weights sampling uses (the EMA where there is one) stored as `storage_dtype`, pipeline.json keeps the
  source's sampling settings with `sampling` ({stage: {field: value}}) applied, plus `meta` (recipe,
  commit, evaluation), which each stage.json also records as "provenance". Written whole or not at all.
  `reuse`: an earlier packed folder; a stage whose stored arrays are identical there keeps its files."""
  info = read_pipeline(src)
  unknown = sorted(set(sampling or {}) - set(info["sampling"]))
  if unknown:
    raise UserError(f"sampling settings for stage(s) {', '.join(unknown)}, which {src} does not have")
  settings = apply_overrides(info["sampling"], sampling)
  if reuse is not None:
    read_pipeline(reuse)  # a clear error now if it is not a pipeline folder
  out = check_new_folder(out)

  def build(staging: Path) -> None:
    for name, path in info["paths"].items():
      stage_meta = info["stages"][name]
      kind = STAGE_KINDS[name]
      tree, which = load_stage_tree(path, kind, stage_meta, ema=ema, log=log)
      keep = {k: v for k, v in stage_meta.items() if k in ("step", "source")}
      save_stage(staging / name, tree, kind=kind, config=stage_meta["config"], storage_dtype=storage_dtype,
                 extra={**keep, "ema": False, "weights": which, **({"provenance": meta} if meta else {})})
      same = reuse is not None and reuse_identical_params(staging / name, Path(reuse) / name)
      log(f"  {name}: {which} weights as {storage_dtype}" + (f" (unchanged: the files of {reuse})" if same else ""))
    write_pipeline_json(staging, {n: n for n in info["paths"]}, {s: v.to_dict() for s, v in settings.items()},
                        info["meta"].get("preset", ""), meta)
  return write_folder(out, build)
