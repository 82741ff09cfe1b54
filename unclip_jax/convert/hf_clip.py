"""transformers CLIP towers (CLIPTextModelWithProjection, CLIPVisionModelWithProjection) → our CLIP.

Karlo's released folders hold CLIP ViT-L/14 as transformers models: text_encoder/ (the text tower and its
projection) and, in the image-variations folder, image_encoder/ with feature_extractor/ (the pixel
mean/std and crop size). transformers splits attention into q/k/v projections and names layers its own
way; `openai_names` renames and fuses them into the OpenAI state-dict layout, so `convert.clip`'s one
mapping (and its shape checks) turns them into our parameters. Sizes, activation and layer-norm epsilon
come from each config.json. The towers carry no `logit_scale` (only CLIPModel does); ours is set to
OpenAI CLIP's trained value, log(100), which only zero-shot scoring reads.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from unclip_jax.convert import clip as openai_clip
from unclip_jax.errors import UserError

LOGIT_SCALE = math.log(100.0)
_ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu"}
_LAYER = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc",
          "mlp.fc2": "mlp.c_proj"}
_FIXED = {"text_model.embeddings.token_embedding.weight": "token_embedding.weight",
          "text_model.embeddings.position_embedding.weight": "positional_embedding",
          "text_model.final_layer_norm.weight": "ln_final.weight", "text_model.final_layer_norm.bias": "ln_final.bias",
          "text_projection.weight": "text_projection",
          "vision_model.embeddings.class_embedding": "visual.class_embedding",
          "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
          "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
          "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
          "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
          "vision_model.post_layernorm.weight": "visual.ln_post.weight",
          "vision_model.post_layernorm.bias": "visual.ln_post.bias",
          "visual_projection.weight": "visual.proj"}
_TRANSPOSED = {"text_projection", "visual.proj"}  # nn.Linear (out, in) → OpenAI's (in, out) parameter
_BLOCK = re.compile(r"^(text|vision)_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_IGNORED = re.compile(r"\.position_ids$")


def openai_names(keys) -> dict[str, list[tuple[str, bool]]]:
  """{OpenAI key: [(transformers key, transpose?)]}: several keys (q, k, v) are concatenated on axis 0."""
  out: dict[str, list[tuple[str, bool]]] = {}
  for key in keys:
    if _IGNORED.search(key):
      continue
    if key in _FIXED:
      out[_FIXED[key]] = [(key, _FIXED[key] in _TRANSPOSED)]
      continue
    m = _BLOCK.match(key)
    if not m:
      raise UserError(f"tensor {key!r} is not part of a transformers CLIP text or vision tower")
    tower, layer, module, leaf = m.groups()
    prefix = f"{'visual.' if tower == 'vision' else ''}transformer.resblocks.{layer}."
    if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
      out.setdefault(f"{prefix}attn.in_proj_{leaf}", []).append((key, False))
    elif module in _LAYER:
      out[f"{prefix}{_LAYER[module]}.{leaf}"] = [(key, False)]
    else:
      raise UserError(f"tensor {key!r} is not part of a transformers CLIP text or vision tower")
  for name, parts in out.items():
    if name.endswith(("in_proj_weight", "in_proj_bias")):
      parts.sort(key=lambda p: "qkv".index(p[0].rsplit(".", 2)[-2][0]))
      if len(parts) != 3:
        raise UserError(f"layer of {parts[0][0]!r} lacks some of its q_proj / k_proj / v_proj tensors")
  return out


def openai_shapes(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
  """`openai_names` applied to {key: shape} (no tensors read)."""
  out = {}
  for name, parts in openai_names(shapes).items():
    dims = [tuple(shapes[k])[::-1] if t else tuple(shapes[k]) for k, t in parts]
    out[name] = (sum(d[0] for d in dims),) + dims[0][1:] if len(dims) > 1 else dims[0]
  return out


def openai_state(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """`openai_names` applied to {key: array}."""
  out = {}
  for name, parts in openai_names(tensors).items():
    arrays = [tensors[k].T if t else tensors[k] for k, t in parts]
    out[name] = np.concatenate(arrays, axis=0) if len(arrays) > 1 else arrays[0]
  return out


def _tower(cfg: dict, file: Path, kind: str) -> dict:
  act = cfg.get("hidden_act", "quick_gelu")
  if act not in _ACTIVATIONS:
    raise UserError(f"{file}: hidden_act {act!r} is not supported (supported: quick_gelu, gelu)")
  if abs(float(cfg.get("layer_norm_eps", 1e-5)) - 1e-5) > 1e-12:
    raise UserError(f"{file}: layer_norm_eps {cfg['layer_norm_eps']} is not supported (unclip_jax's CLIP uses 1e-5)")
  width, heads = cfg.get("hidden_size", 512 if kind == "text" else 768), cfg.get("num_attention_heads", 8)
  if width % heads:
    raise UserError(f"{file}: hidden_size {width} is not divisible by num_attention_heads {heads}")
  mlp = cfg.get("intermediate_size", 4 * width)
  return {"width": width, "heads": heads, "layers": cfg.get("num_hidden_layers", 12), "mlp_ratio": mlp / width,
          "activation": _ACTIVATIONS[act], "embed_dim": cfg.get("projection_dim", 512)}


def clip_config(text_cfg: dict, text_file: Path, vision_cfg: dict | None = None, vision_file: Path | None = None,
                processor: dict | None = None, processor_file: Path | None = None):
  """Our `CLIPConfig` from the towers' config.json (and the feature extractor's preprocessor_config.json)."""
  from unclip_jax.models.clip import CLIPConfig

  t = _tower(text_cfg, text_file, "text")
  fields: dict[str, Any] = dict(embed_dim=t["embed_dim"], context_length=text_cfg.get("max_position_embeddings", 77),
                                vocab_size=text_cfg.get("vocab_size", 49408), text_width=t["width"],
                                text_heads=t["heads"], text_layers=t["layers"], mlp_ratio=t["mlp_ratio"],
                                activation=t["activation"], init_logit_scale=LOGIT_SCALE, image_tower=False)
  if vision_cfg is not None:
    v = _tower(vision_cfg, vision_file, "vision")
    for key in ("embed_dim", "mlp_ratio", "activation"):
      if v[key] != t[key]:
        raise UserError(f"{vision_file}: {key} {v[key]} differs from the text encoder's {t[key]} "
                        "(unclip_jax's CLIP shares it between the towers)")
    fields.update(image_tower=True, image_size=vision_cfg.get("image_size", 224),
                  patch_size=vision_cfg.get("patch_size", 32), vision_width=v["width"], vision_heads=v["heads"],
                  vision_layers=v["layers"])
    fields.update(_pixels(processor or {}, processor_file, fields["image_size"]))
  try:
    return CLIPConfig(**fields)
  except ValueError as e:
    raise UserError(f"{vision_file or text_file}: inconsistent CLIP sizes ({e})") from None


def _pixels(processor: dict, file: Path | None, image_size: int) -> dict:
  """The feature extractor's normalisation; its crop must be the tower's input size."""
  crop = processor.get("crop_size", image_size)
  crop = (crop.get("height"), crop.get("width")) if isinstance(crop, dict) else (crop, crop)
  if processor.get("do_center_crop", True) and crop != (image_size, image_size):
    raise UserError(f"{file}: crop_size {crop} differs from the image encoder's image_size {image_size}")
  for key in ("do_rescale", "do_normalize"):
    if not processor.get(key, True):
      raise UserError(f"{file}: {key} false is not supported (CLIP rescales to [0, 1] and standardises)")
  if abs(float(processor.get("rescale_factor", 1 / 255)) - 1 / 255) > 1e-9:
    raise UserError(f"{file}: rescale_factor {processor['rescale_factor']} is not 1/255")
  mean = tuple(float(x) for x in processor.get("image_mean", (0.48145466, 0.4578275, 0.40821073)))
  std = tuple(float(x) for x in processor.get("image_std", (0.26862954, 0.26130258, 0.27577711)))
  if len(mean) != 3 or len(std) != 3:
    raise UserError(f"{file}: image_mean and image_std need 3 values (RGB)")
  return {"image_mean": mean, "image_std": std}


def check(shapes: Mapping[str, tuple[int, ...]], config, what: str) -> None:
  """The towers' tensor shapes against `config`, before any tensor is read; UserError prefixed with `what`."""
  try:
    openai_clip.check_shapes({**openai_shapes(shapes), "logit_scale": ()}, config)
  except UserError as e:
    raise UserError(f"{what}: {e}") from None


def convert(tensors: Mapping[str, np.ndarray], config) -> dict:
  """{transformers key: float32 array} of one or both towers → our CLIP parameter tree for `config`."""
  state = {**openai_state(tensors), "logit_scale": np.float32(config.init_logit_scale)}
  return openai_clip.convert_state_dict(state, config)
