"""Karlo (diffusers layout) → unclip_jax stage checkpoints.

    python -m unclip_jax.convert karlo KARLO_DIR --out OUT_DIR

KARLO_DIR is a diffusers `UnCLIPPipeline` folder (e.g. a local copy of kakaobrain/karlo-v1-alpha) with
prior/, text_proj/, decoder/, super_res_first/, super_res_last/, each holding config.json and
diffusion_pytorch_model.safetensors. The result is OUT/prior, OUT/decoder (text_proj + UNet), OUT/sr_64_256
(super_res_first) and OUT/sr_64_256_last (super_res_last, Karlo's fine-tuned model for the final SR step).

Our modules use diffusers' module names, so the mapping is mechanical: walk the parameters our model
expects, derive the torch key ("down_blocks_0/resnets_1/conv1/kernel" → "down_blocks.0.resnets.1.conv1.weight"),
transpose Linear (O,I → I,O) and Conv (O,I,H,W → H,W,I,O) weights, and check every shape. Any missing,
mis-shaped or left-over tensor is a `UserError` naming it; every folder is checked (from the safetensors
headers) before any tensor is loaded or any checkpoint written. safetensors are read with
`safetensors.numpy` (no torch needed).

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

from unclip_jax.errors import ArgumentParser, UserError
from unclip_jax.models import registry

# Our module names that stand for a torch ModuleList / Sequential index ("resnets_1" ↔ "resnets.1").
_LIST_NAMES = re.compile(r"^(transformer_blocks|to_out|net|down_blocks|up_blocks|resnets|attentions|downsamplers"
                         r"|upsamplers)_(\d+)$")
WEIGHTS = "diffusion_pytorch_model.safetensors"
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


def _read_config(folder: Path) -> dict:
  path = folder / "config.json"
  if not path.is_file():
    raise UserError(f"{folder} has no config.json; expected a diffusers Karlo folder "
                    f"({', '.join(list(STAGES) + ['text_proj'])})")
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise UserError(f"{path} is not valid JSON ({e.msg})") from None


def _safetensors():
  try:
    import safetensors.numpy  # noqa: F401  (the converter's only reader; torch is not needed)
  except ImportError:
    raise UserError("reading Karlo weights needs the `safetensors` package (pip install safetensors)") from None
  return safetensors


def _shapes(folder: Path) -> dict[str, tuple[int, ...]]:
  safe_open = _safetensors().safe_open

  path = folder / WEIGHTS
  if not path.is_file():
    raise UserError(f"{folder} has no {WEIGHTS} (only the safetensors format is read)")
  try:
    with safe_open(str(path), framework="numpy") as f:
      return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
  except Exception as e:  # noqa: BLE001 - a corrupt file is the user's to fix
    raise UserError(f"cannot read {path}: {e}") from None


def _load(folder: Path, steps, abstract) -> Any:
  state = _safetensors().numpy.load_file(str(folder / WEIGHTS))
  flat, treedef = jax.tree_util.tree_flatten(abstract)
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


def _jobs(src: Path):
  """Yields (out name, kind, stage config, [(folder, steps, abstract, place)]) after checking every folder."""
  jobs = []
  folder = src / "prior"
  m = prior_model_config(_read_config(folder), folder)
  abstract = registry.abstract_params("prior", m)
  jobs.append(("prior", "prior", _stage_config("prior", m),
               [(folder, plan(_shapes(folder), abstract, what=str(folder / WEIGHTS)), abstract, None)]))

  folder, proj_folder = src / "decoder", src / "text_proj"
  m = decoder_model_config(_read_config(folder), folder, _read_config(proj_folder), proj_folder)
  abstract = registry.abstract_params("decoder", m)
  parts = []
  for sub, f in (("unet", folder), ("text_proj", proj_folder)):
    parts.append((f, plan(_shapes(f), abstract[sub], what=str(f / WEIGHTS)), abstract[sub], sub))
  jobs.append(("decoder", "decoder", _stage_config("decoder", m), parts))

  for name in ("super_res_first", "super_res_last"):
    folder = src / name
    m = upsampler_model_config(_read_config(folder), folder)
    abstract = registry.abstract_params("upsampler", m)
    jobs.append((STAGES[name][0], "upsampler", _stage_config("sr_64_256", m),
                 [(folder, plan(_shapes(folder), abstract, what=str(folder / WEIGHTS)), abstract, None)]))
  return jobs


def convert(src: str | Path, out: str | Path, *, overwrite: bool = False) -> dict[str, Path]:
  """Converts a Karlo folder; every folder is checked before anything is written. Returns {stage: path}."""
  from unclip_jax.checkpoint import save_stage

  src, out = Path(src), Path(out)
  if not src.is_dir():
    raise UserError(f"Karlo folder {src} does not exist")
  jobs = _jobs(src)
  if not overwrite:
    for name, *_ in jobs:
      if (out / name).exists():
        raise UserError(f"{out / name} already exists; choose another --out folder or pass --overwrite")
  written = {}
  for name, kind, config, parts in jobs:
    params = {}
    for folder, steps, abstract, place in parts:
      tree = _load(folder, steps, abstract)
      if place is None:
        params = tree
      else:
        params[place] = tree
    extra = {"converted_from": str(src.absolute())}
    written[name] = save_stage(out / name, params, kind=kind, config=config, extra=extra, overwrite=overwrite)
    del params
  return written


def main(argv) -> int:
  parser = ArgumentParser(prog="python -m unclip_jax.convert karlo",
                                   description="Convert a diffusers-format Karlo folder into unclip_jax stage "
                                               "checkpoints (prior, decoder, sr_64_256, sr_64_256_last).")
  parser.add_argument("karlo_dir", help="folder with prior/ text_proj/ decoder/ super_res_first/ super_res_last/")
  parser.add_argument("--out", required=True, help="output folder for the stage checkpoints")
  parser.add_argument("--overwrite", action="store_true", help="replace existing stage folders in --out")
  args = parser.parse_args(list(argv))
  for name, path in convert(args.karlo_dir, args.out, overwrite=args.overwrite).items():
    print(f"{name}: {path}")
  return 0
