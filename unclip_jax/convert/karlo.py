"""Karlo's diffusion stages (diffusers layout) → unclip_jax stage parameters: the tensor mapping and model configs.

The diffusers `UnCLIPPipeline` folder (kakaobrain/karlo-v1-alpha) holds prior/, text_proj/, decoder/,
super_res_first/, super_res_last/, each with config.json and its weights (`convert.weights`: safetensors,
.bin, fp16 variants, shards). They become our stages prior, decoder (text_proj + UNet), sr_64_256
(super_res_first) and sr_64_256_last (super_res_last, Karlo's fine-tuned model for the final SR step);
`convert.karlo_pipeline` adds CLIP and writes the pipeline folder.

Our modules use diffusers' module names, so the mapping is mechanical: walk the parameters our model
expects, derive the torch key ("down_blocks_0/resnets_1/conv1/kernel" → "down_blocks.0.resnets.1.conv1.weight"),
transpose Linear (O,I → I,O) and Conv (O,I,H,W → H,W,I,O) weights, and check every shape. Any missing,
mis-shaped or left-over tensor is a `UserError` naming it; every folder is checked (from the weight files'
headers) before any tensor is loaded or any checkpoint written.

What each stage checkpoint's parameter tree holds (`checkpoint.load_stage_params`):
  prior            {"params": ..., "stats": {"clip_mean", "clip_std"}}  (the full variables of PriorTransformer)
  decoder          {"unet": ..., "text_proj": ...}                      (the params of models.unet.Decoder)
  sr_64_256[_last] the params of models.unet.UNet
`stage.json`'s config is {"preset": "karlo", "stage", "model": <configs/*.py model fields>, "diffusion": ...}.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np

from unclip_jax.convert.weights import WeightFiles
from unclip_jax.errors import UserError
from unclip_jax.models import registry

# Our module names that stand for a torch ModuleList / Sequential index ("resnets_1" ↔ "resnets.1").
_LIST_NAMES = re.compile(r"^(transformer_blocks|to_out|net|down_blocks|up_blocks|resnets|attentions|downsamplers"
                         r"|upsamplers)_(\d+)$")
# Karlo folder → (our stage folder, stage kind)
STAGES = {"prior": ("prior", "prior"), "decoder": ("decoder", "decoder"),
          "super_res_first": ("sr_64_256", "upsampler"), "super_res_last": ("sr_64_256_last", "upsampler")}


def torch_key(path: tuple[str, ...]) -> tuple[str, str]:
  """Our parameter path → (torch key, how to transform: 'dense' | 'conv' | 'norm' | 'raw')."""
  parts = []
  for p in path[:-1]:
    m = _LIST_NAMES.match(p)
    parts.extend([m.group(1), m.group(2)] if m else [p])
  leaf = path[-1]
  if leaf == "kernel":
    return ".".join(parts + ["weight"]), "kernel"
  if leaf == "scale":
    return ".".join(parts + ["weight"]), "raw"
  return ".".join(parts + [leaf]), "raw"


def _layout_shape(shape: tuple[int, ...], how: str, want: tuple[int, ...]) -> tuple[int, ...]:
  """The shape a torch tensor of `shape` has after our layout change (for checking before loading)."""
  if how == "kernel" and len(shape) == 2:
    return shape[::-1]
  if how == "kernel" and len(shape) == 4:
    return (shape[2], shape[3], shape[1], shape[0])
  if how == "raw" and shape != want and tuple(d for d in shape if d != 1) == tuple(d for d in want if d != 1):
    return want  # clip_mean [1, D] ↔ [D]
  return shape


def _transform(array: np.ndarray, how: str, want: tuple[int, ...]) -> np.ndarray:
  if how == "kernel" and array.ndim == 2:
    return array.T
  if how == "kernel" and array.ndim == 4:
    return array.transpose(2, 3, 1, 0)
  return array.reshape(want) if array.shape != want else array


def plan(shapes: Mapping[str, tuple[int, ...]], abstract: Any, *, what: str = "state dict") -> list[tuple[str, str]]:
  """Checks a state dict's {key: shape} against `abstract` before anything is loaded.

  Returns (torch key, transform) per leaf of `abstract`, in `tree_flatten` order. Raises `UserError`
  naming the first missing or mis-shaped tensor, or a tensor the model does not use.
  """
  flat, _ = jax.tree_util.tree_flatten_with_path(abstract)
  steps = []
  for path, leaf in flat:
    names = tuple(getattr(k, "key", getattr(k, "name", str(k))) for k in path)
    if names[0] in ("params", "stats"):  # a variables dict: collections do not appear in torch keys
      names = names[1:]
    key, how = torch_key(names)
    if key not in shapes:
      raise UserError(f"{what} lacks tensor {key!r} (needed for {'/'.join(names)}); "
                      "is it a diffusers Karlo folder of the expected model?")
    want, have = tuple(leaf.shape), tuple(shapes[key])
    if _layout_shape(have, how, want) != want:
      expected = {"kernel": "transposed "}.get(how, "")
      raise UserError(f"{what}: tensor {key!r} has shape {have}, but its config.json implies {expected}{want}")
    steps.append((key, how))
  used = {k for k, _ in steps}
  extra = sorted(k for k in shapes if k not in used)
  if extra:
    raise UserError(f"{what} has tensor {extra[0]!r} that the model config does not use"
                    + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
  return steps


def convert_state_dict(state: Mapping[str, np.ndarray], abstract: Any, *, what: str = "state dict") -> Any:
  """Fills the pytree `abstract` (leaves with .shape) from a diffusers state dict (see `plan`)."""
  steps = plan({k: tuple(np.shape(v)) for k, v in state.items()}, abstract, what=what)
  flat, treedef = jax.tree_util.tree_flatten(abstract)
  leaves = [np.asarray(_transform(np.asarray(state[k]), how, tuple(leaf.shape)), np.float32)
            for (k, how), leaf in zip(steps, flat)]
  return jax.tree_util.tree_unflatten(treedef, leaves)


# ----------------------------------------------------------------------------------------------- folders


def read_config(folder: Path, name: str = "config.json") -> dict:
  """A component's JSON config; a missing folder or file, or bad JSON, is a UserError naming it."""
  path = folder / name
  if not path.is_file():
    what = "is missing" if not folder.is_dir() else f"has no {name}"
    raise UserError(f"{folder} {what}; a diffusers Karlo folder has "
                    f"{', '.join(list(STAGES) + ['text_proj', 'text_encoder', 'tokenizer'])} and the schedulers")
  try:
    value = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise UserError(f"{path} is not valid JSON ({getattr(e, 'msg', e)})") from None
  if not isinstance(value, dict):
    raise UserError(f"{path} does not hold a JSON object")
  return value


def _load(files: WeightFiles, steps, abstract) -> Any:
  flat, treedef = jax.tree_util.tree_flatten(abstract)
  state = dict(files.tensors(k for k, _ in steps))
  leaves = [np.asarray(_transform(state.pop(k), how, tuple(leaf.shape)), np.float32)
            for (k, how), leaf in zip(steps, flat)]
  return jax.tree_util.tree_unflatten(treedef, leaves)


def _require(cfg: dict, folder: Path, key: str, allowed) -> None:
  value = cfg.get(key, allowed[0])
  if value not in allowed:
    raise UserError(f"{folder}/config.json: {key}={value!r} is not supported by unclip_jax "
                    f"(supported: {', '.join(map(repr, allowed))})")


def prior_model_config(cfg: dict, folder: Path) -> dict:
  """diffusers PriorTransformer config.json → configs/prior.py's `model` fields."""
  for key, allowed in (("additional_embeddings", [4]), ("norm_in_type", [None]),
                       ("embedding_proj_norm_type", [None]), ("encoder_hid_proj_type", ["linear"]),
                       ("added_emb_type", ["prd"]), ("time_embed_act_fn", ["silu"])):
    _require(cfg, folder, key, allowed)
  heads, head_dim = cfg.get("num_attention_heads", 32), cfg.get("attention_head_dim", 64)
  dim = cfg.get("embedding_dim", 768)
  _require(cfg, folder, "time_embed_dim", [None, heads * head_dim])
  _require(cfg, folder, "embedding_proj_dim", [None, dim])
  _require(cfg, folder, "clip_embed_dim", [None, dim])
  return dict(num_attention_heads=heads, attention_head_dim=head_dim, num_layers=cfg.get("num_layers", 20),
              embedding_dim=dim, num_embeddings=cfg.get("num_embeddings", 77), additional_embeddings=4,
              dropout=cfg.get("dropout", 0.0), dtype="float32", remat=False)


def _unet_common(cfg: dict, folder: Path, down_types: dict, up_types: dict) -> dict:
  for key, allowed in (("flip_sin_to_cos", [True]), ("freq_shift", [0]), ("act_fn", ["silu"]),
                       ("center_input_sample", [False]), ("time_embedding_type", ["positional"]),
                       ("resnet_time_scale_shift", ["default", "scale_shift"])):
    _require(cfg, folder, key, allowed)
  chans = tuple(cfg["block_out_channels"])
  downs, ups = list(cfg["down_block_types"]), list(cfg["up_block_types"])
  for t in downs + ups:
    if t not in down_types and t not in up_types:
      raise UserError(f"{folder}/config.json: block type {t!r} is not supported by unclip_jax")
  attention = tuple(down_types.get(t, None) for t in downs)
  if None in attention or len(ups) != len(downs) or tuple(up_types.get(t) for t in reversed(ups)) != attention:
    raise UserError(f"{folder}/config.json: down_block_types {downs} and up_block_types {ups} are not a "
                    "mirrored Karlo layout")
  if len(chans) != len(downs):
    raise UserError(f"{folder}/config.json: {len(chans)} block_out_channels for {len(downs)} blocks")
  return dict(in_channels=cfg.get("in_channels", 3), out_channels=cfg.get("out_channels", 3),
              block_out_channels=chans, layers_per_block=cfg.get("layers_per_block", 2), attention_levels=attention,
              scale_shift=cfg.get("resnet_time_scale_shift", "default") == "scale_shift",
              norm_groups=cfg.get("norm_num_groups", 32), norm_eps=cfg.get("norm_eps", 1e-5), dtype="float32",
              remat=False)


def decoder_model_config(cfg: dict, folder: Path, proj: dict, proj_folder: Path) -> dict:
  """diffusers UNet2DConditionModel + UnCLIPTextProjModel configs → configs/decoder.py's `model` fields."""
  _require(cfg, folder, "class_embed_type", ["identity"])
  _require(cfg, folder, "mid_block_type", ["UNetMidBlock2DSimpleCrossAttn"])
  for key in ("encoder_hid_dim", "addition_embed_type", "time_embedding_act_fn", "time_cond_proj_dim"):
    _require(cfg, folder, key, [None])
  m = _unet_common(cfg, folder, {"ResnetDownsampleBlock2D": False, "SimpleCrossAttnDownBlock2D": True},
                   {"ResnetUpsampleBlock2D": False, "SimpleCrossAttnUpBlock2D": True})
  head = cfg.get("attention_head_dim", 8)
  if not isinstance(head, int):
    raise UserError(f"{folder}/config.json: attention_head_dim must be one number, got {head!r}")
  only_cross = cfg.get("only_cross_attention", False)
  if not isinstance(only_cross, bool):
    raise UserError(f"{folder}/config.json: per-block only_cross_attention is not supported")
  m.update(mid_attention=True, attention_head_dim=head, cross_attention_dim=cfg.get("cross_attention_dim", 1280),
           only_cross_attention=only_cross, image_size=cfg.get("sample_size") or 64,
           clip_embeddings_dim=proj.get("clip_embeddings_dim", 768),
           clip_extra_context_tokens=proj.get("clip_extra_context_tokens", 4), text_len=77, dropout=0.0)
  if proj.get("cross_attention_dim") != m["cross_attention_dim"] or proj.get("time_embed_dim") != 4 * m[
      "block_out_channels"][0]:
    raise UserError(f"{proj_folder}/config.json does not fit the decoder: cross_attention_dim "
                    f"{proj.get('cross_attention_dim')} vs {m['cross_attention_dim']}, time_embed_dim "
                    f"{proj.get('time_embed_dim')} vs {4 * m['block_out_channels'][0]}")
  return m


def upsampler_model_config(cfg: dict, folder: Path) -> dict:
  """diffusers UNet2DModel (super_res_first / _last) config → configs/upsampler.py's `model` fields."""
  if cfg.get("add_attention", True):
    raise UserError(f"{folder}/config.json: add_attention must be false for a Karlo super-resolution UNet")
  m = _unet_common(cfg, folder, {"ResnetDownsampleBlock2D": False}, {"ResnetUpsampleBlock2D": False})
  size = cfg.get("sample_size") or 256
  m.update(mid_attention=False, image_size=size, low_res_size=size // 4, dropout=0.0)
  return m


def _stage_config(stage: str, model: dict) -> dict:
  from unclip_jax.diffusion.config import diffusion_config

  return {"preset": "karlo", "stage": stage, "model": model,
          "diffusion": diffusion_config(stage, "karlo").to_dict(), "source": "karlo (diffusers layout)"}


def _planned(folder: Path, abstract, place=None) -> tuple:
  files = WeightFiles(folder)
  return (files, plan(files.shapes(), abstract, what=str(files.path)), abstract, place)


def stage_jobs(src: Path) -> list[tuple[str, str, dict, list]]:
  """[(out name, kind, stage config, [(WeightFiles, steps, abstract, place)])], every folder's config and
  tensor shapes checked; no tensor is loaded."""
  jobs = []
  folder = src / "prior"
  m = prior_model_config(read_config(folder), folder)
  jobs.append(("prior", "prior", _stage_config("prior", m), [_planned(folder, registry.abstract_params("prior", m))]))

  folder, proj_folder = src / "decoder", src / "text_proj"
  m = decoder_model_config(read_config(folder), folder, read_config(proj_folder), proj_folder)
  abstract = registry.abstract_params("decoder", m)
  parts = [_planned(f, abstract[sub], sub) for sub, f in (("unet", folder), ("text_proj", proj_folder))]
  jobs.append(("decoder", "decoder", _stage_config("decoder", m), parts))

  for name in ("super_res_first", "super_res_last"):
    folder = src / name
    m = upsampler_model_config(read_config(folder), folder)
    jobs.append((STAGES[name][0], "upsampler", _stage_config("sr_64_256", m),
                 [_planned(folder, registry.abstract_params("upsampler", m))]))
  return jobs


def load_job(parts: list) -> Any:
  """The parameter tree of one planned stage (see `stage_jobs`), float32."""
  params = {}
  for files, steps, abstract, place in parts:
    tree = _load(files, steps, abstract)
    if place is None:
      params = tree
    else:
      params[place] = tree
  return params
