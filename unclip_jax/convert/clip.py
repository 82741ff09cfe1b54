"""`python -m unclip_jax.convert clip --from openai|open_clip PATH --out DIR`: ViT CLIP weights → stage checkpoint.

OpenAI's and open_clip's ViT CLIP state dicts share key names (`visual.conv1.weight`, `visual.transformer.
resblocks.N.attn.in_proj_weight`, `token_embedding.weight`, `ln_final`, `text_projection`, `logit_scale`...),
so one mapping serves both; the source only decides the default activation (OpenAI: QuickGELU, open_clip:
GELU unless the model name ends in `-quickgelu`). The architecture comes from `--model` or is inferred
from tensor shapes (head counts, which shapes cannot tell, then follow OpenAI's width // 64). Reading
.safetensors needs only numpy; .pt/.bin files need torch, imported only for them. Every missing or
mis-shaped tensor is a `UserError` that names it.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from unclip_jax.errors import ArgumentParser, UserError, check_writable

SOURCES = ("openai", "open_clip")
_IGNORED = {"input_resolution", "context_length", "vocab_size", "attn_mask", "visual.attn_mask"}


# ---------------------------------------------------------------------------------------------- reading

def _to_numpy(t) -> np.ndarray:
  if isinstance(t, np.ndarray):
    return t
  if t.is_floating_point():
    t = t.float()  # fp16 / bf16 released weights: convert at rest to float32
  return t.detach().cpu().numpy()


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
  """Reads a .safetensors file (numpy only) or a torch .pt/.bin/.pth (plain, wrapped or TorchScript)."""
  path = Path(path)
  if not path.is_file():
    raise UserError(f"weights file {path} does not exist")
  if path.suffix == ".safetensors":
    from safetensors.numpy import load_file

    try:
      sd = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for corrupt headers
      raise UserError(f"cannot read {path} as safetensors ({type(e).__name__}: {e})") from None
  else:
    try:
      import torch
    except ImportError:
      raise UserError(f"reading {path.name} needs PyTorch; install torch or convert the file to .safetensors") \
          from None
    with warnings.catch_warnings():  # torch warns that TorchScript loading is deprecated; it is what we need
      warnings.simplefilter("ignore")
      try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
      except Exception as first:
        try:  # OpenAI's released .pt files are TorchScript archives
          obj = torch.jit.load(str(path), map_location="cpu").state_dict()
        except Exception:
          raise UserError(f"cannot read {path} as a PyTorch state dict ({type(first).__name__})") from None
      if hasattr(obj, "state_dict") and not isinstance(obj, Mapping):  # a ScriptModule from torch.load
        obj = obj.state_dict()
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
      obj = obj["state_dict"]  # open_clip training checkpoints wrap the weights
    if not isinstance(obj, Mapping):
      raise UserError(f"{path} does not hold a state dict (found {type(obj).__name__})")
    sd = {k: _to_numpy(v) for k, v in obj.items() if hasattr(v, "shape")}
  return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}


# ---------------------------------------------------------------------------------- architecture

def _count_blocks(sd: Mapping[str, Any], prefix: str) -> int:
  pattern = re.compile(re.escape(prefix) + r"resblocks\.(\d+)\.")
  found = {int(m.group(1)) for k in sd if (m := pattern.match(k))}
  return max(found) + 1 if found else 0


def _need(sd: Mapping[str, np.ndarray], key: str) -> np.ndarray:
  if key not in sd:
    raise UserError(f"tensor {key} is missing from the state dict; is this a ViT CLIP checkpoint?")
  return sd[key]


def infer_config(sd: Mapping[str, np.ndarray], *, source: str = "openai", model: str | None = None,
                 activation: str | None = None, **overrides):
  """The `CLIPConfig` for a state dict: a preset (`model`) or shapes, plus explicit overrides."""
  from unclip_jax.models.clip import CLIPConfig, get_preset

  if source not in SOURCES:
    raise UserError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
  if "visual.layer1.0.conv1.weight" in sd or "visual.attnpool.positional_embedding" in sd:
    raise UserError("this is a ResNet CLIP; only ViT CLIP models are supported")
  if activation is None:
    quick = source == "openai" or (model is not None and model.lower().endswith("-quickgelu"))
    activation = "quick_gelu" if quick else "gelu"
  if model is not None:
    name = re.sub(r"-quickgelu$", "", model, flags=re.IGNORECASE)
    try:
      base = get_preset(name)
    except KeyError as e:
      raise UserError(str(e.args[0])) from None
    fields = {}
  else:
    conv = _need(sd, "visual.conv1.weight")
    vpos = _need(sd, "visual.positional_embedding")
    grid = int(round((vpos.shape[0] - 1) ** 0.5))
    vwidth, twidth = conv.shape[0], _need(sd, "ln_final.weight").shape[0]
    fields = dict(
        embed_dim=_need(sd, "text_projection").shape[1], image_size=conv.shape[-1] * grid,
        patch_size=conv.shape[-1], vision_width=vwidth, vision_layers=_count_blocks(sd, "visual.transformer."),
        vision_heads=max(vwidth // 64, 1), context_length=_need(sd, "positional_embedding").shape[0],
        vocab_size=_need(sd, "token_embedding.weight").shape[0], text_width=twidth,
        text_heads=max(twidth // 64, 1), text_layers=_count_blocks(sd, "transformer."),
        mlp_ratio=_need(sd, "visual.transformer.resblocks.0.mlp.c_fc.weight").shape[0] / vwidth)
    base = CLIPConfig()
  fields["activation"] = activation
  if "logit_bias" in sd:
    fields["init_logit_bias"] = float(np.asarray(sd["logit_bias"]).reshape(-1)[0])
  fields.update({k: v for k, v in overrides.items() if v is not None})
  try:
    return base.replace(**fields)
  except ValueError as e:
    raise UserError(f"inconsistent architecture: {e}") from None


# ---------------------------------------------------------------------------------------- mapping

def _torch_name(path: tuple[str, ...]) -> tuple[str, str]:
  """Our param path → (state-dict key, how to transform it: 'copy' | 'T' | 'conv' | 'scalar')."""
  *mods, leaf = path
  mods = [re.sub(r"^resblocks_(\d+)$", r"resblocks.\1", m) for m in mods]
  if mods and mods[-1] in ("c_fc", "c_proj"):
    mods.insert(len(mods) - 1, "mlp")
  if mods and mods[-1] == "in_proj":  # torch stores the fused projection on the attention module itself
    mods.pop()
    return ".".join(mods + [{"kernel": "in_proj_weight", "bias": "in_proj_bias"}[leaf]]), \
        ("T" if leaf == "kernel" else "copy")
  if leaf in ("logit_scale", "logit_bias"):
    return leaf, "scalar"
  if mods and mods[-1] == "conv1":
    return ".".join(mods + ["weight"]), "conv"
  if mods and mods[-1] == "token_embedding":
    return "token_embedding.weight", "copy"
  torch_leaf = {"kernel": "weight", "scale": "weight"}.get(leaf, leaf)
  return ".".join(mods + [torch_leaf]), ("T" if leaf == "kernel" else "copy")


def _forward(x: np.ndarray, how: str) -> np.ndarray:
  if how == "T":
    return x.T
  if how == "conv":  # (out, in, kh, kw) → (kh, kw, in, out)
    return x.transpose(2, 3, 1, 0) if x.ndim == 4 else x
  if how == "scalar":
    return x.reshape(()) if x.size == 1 else x
  return x


def _backward(x: np.ndarray, how: str) -> np.ndarray:
  if how == "T":
    return x.T
  if how == "conv":
    return x.transpose(3, 2, 0, 1)
  return x


def _leaves(tree, prefix=()):
  for k, v in tree.items():
    if isinstance(v, Mapping):
      yield from _leaves(v, prefix + (k,))
    else:
      yield prefix + (k,), v


def _set(tree: dict, path: tuple[str, ...], value):
  for k in path[:-1]:
    tree = tree.setdefault(k, {})
  tree[path[-1]] = value


def check_shapes(shapes: Mapping[str, tuple[int, ...]], config) -> None:
  """What `convert_state_dict` checks, on {key: shape} alone (no tensor read): UserError naming the first
  missing, mis-shaped or unused tensor."""
  from unclip_jax.models.clip import abstract_params

  used = set()
  for path, leaf in _leaves(abstract_params(config)):
    key, how = _torch_name(path)
    if key not in shapes:
      raise UserError(f"tensor {key} is missing from the state dict; is this a ViT CLIP checkpoint?")
    have = _forward(np.broadcast_to(np.float32(0), tuple(shapes[key])), how).shape  # a view: nothing allocated
    if tuple(have) != tuple(leaf.shape):
      raise UserError(f"tensor {key} has shape {tuple(shapes[key])}, but the architecture "
                      f"needs {tuple(_backward(np.broadcast_to(np.float32(0), leaf.shape), how).shape)}")
    used.add(key)
  extra = sorted(k for k in shapes if k not in used and k not in _IGNORED)
  if extra:
    more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
    raise UserError(f"tensor {extra[0]}{more} is not part of this CLIP's towers; check the layer counts")


def convert_state_dict(sd: Mapping[str, Any], config) -> dict:
  """OpenAI/open_clip ViT CLIP state dict (numpy arrays) → our float32 param tree for `config`."""
  from unclip_jax.models.clip import abstract_params

  wanted = abstract_params(config)
  params: dict = {}
  used = set()
  for path, leaf in _leaves(wanted):
    key, how = _torch_name(path)
    raw = np.asarray(_need(sd, key), dtype=np.float32)
    value = _forward(raw, how)
    if tuple(value.shape) != tuple(leaf.shape):
      raise UserError(f"tensor {key} has shape {tuple(raw.shape)}, but the architecture "
                      f"needs {tuple(_backward(np.zeros(leaf.shape), how).shape)}")
    used.add(key)
    _set(params, path, np.array(value, dtype=np.float32, order="C"))  # ascontiguousarray makes 0-d 1-d
  extra = sorted(k for k in sd if k not in used and k not in _IGNORED)
  if extra:
    more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
    raise UserError(f"tensor {extra[0]}{more} is not part of a {config.vision_layers}/{config.text_layers}-layer "
                    "ViT CLIP; check --model or the layer counts")
  return params


def export_state_dict(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The inverse of `convert_state_dict`: our params → OpenAI/open_clip key names and layouts."""
  out = {}
  for path, value in _leaves(params):
    key, how = _torch_name(path)
    out[key] = np.array(_backward(np.asarray(value, np.float32), how), order="C")
  return out


# ---------------------------------------------------------------------------------------------- CLI

def main(argv) -> int:
  parser = ArgumentParser(prog="python -m unclip_jax.convert clip",
                   description="Convert OpenAI / open_clip ViT CLIP weights to a unclip_jax stage checkpoint.")
  parser.add_argument("path", help=".safetensors, .pt, .bin or .pth state dict")
  parser.add_argument("--from", dest="source", choices=SOURCES, required=True, help="layout / activation family")
  parser.add_argument("--out", required=True, help="output checkpoint folder (must not exist)")
  parser.add_argument("--model", help="architecture preset (ViT-B/32, ViT-B-16, ViT-L/14, ...); default: infer")
  parser.add_argument("--activation", choices=("gelu", "quick_gelu"), help="override the source's default")
  parser.add_argument("--vision-heads", type=int, help="default: vision width // 64")
  parser.add_argument("--text-heads", type=int, help="default: text width // 64")
  args = parser.parse_args(argv)

  from unclip_jax.checkpoint import save_stage
  from unclip_jax.models.clip import count_params

  if Path(args.out).exists():  # fail before the (possibly slow) read of a large weights file
    raise UserError(f"{Path(args.out).absolute()} already exists; choose another --out folder or remove it first")
  check_writable(args.out, "--out")
  sd = load_state_dict(args.path)
  config = infer_config(sd, source=args.source, model=args.model, activation=args.activation,
                        vision_heads=args.vision_heads, text_heads=args.text_heads)
  params = convert_state_dict(sd, config)
  target = save_stage(args.out, params, kind="clip", config=config.to_dict(),
                      extra={"converted_from": {"source": args.source, "file": Path(args.path).name}})
  print(f"wrote {target}: ViT CLIP, {count_params(params):,} parameters, image {config.image_size}px "
        f"patch {config.patch_size}, activation {config.activation}")
  return 0
