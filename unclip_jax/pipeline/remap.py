"""Carry a trained decoder over to a retrained CLIP (`python -m unclip_jax.pipeline remap`).

A decoder reads its CLIP only through the four dense layers of its `text_proj` (the image embedding twice,
the pooled text embedding, the per-token text states) and the learned no-image embedding that stands in
for the image one. Two CLIPs trained on the same data give embeddings of the same image or caption that
are close to an affine function of each other. So fitting, by least squares, the affine map from the new
CLIP's outputs to the old one's on the same scenes and composing each of those input layers with it gives a
decoder that computes, on the new CLIP's outputs, what the old decoder computed on the old one's. It is a
warm start for `train.init_from`: the UNet keeps what many thousands of steps taught it (each shape and
colour, the held-out pairs it learnt to compose) instead of starting from noise when only the CLIP changed.
How well the old CLIP's outputs are explained by the new one's (R², reported per input) says how much of
that carries over; what the new CLIP knows and the old one did not (e.g. where objects are) the fine-tune
has to learn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from unclip_jax.errors import UserError

# text_proj's dense layers, by the CLIP output each reads (`unclip_jax.models.unet.TextProj`).
INPUT_LAYERS = {
    "image_embedding": ("clip_image_embeddings_project_to_time_embeddings", "clip_extra_context_tokens_proj"),
    "text_embedding": ("embedding_proj",),
    "text_states": ("encoder_hidden_states_proj",),
}
NO_IMAGE = "learned_classifier_free_guidance_embeddings"  # replaces the image embedding where it is dropped
RIDGE = 1e-3  # on the demo CLIPs: R² within 0.001 of plain least squares, every map weight below 1.2


def affine_fit(x: np.ndarray, y: np.ndarray, ridge: float = RIDGE) -> tuple[np.ndarray, np.ndarray, float]:
  """Ridge least-squares (a, c) with y ≈ x @ a + c, and R² (1 − residual / total sum of squares, over all
  dimensions together). x [N, D_in], y [N, D_out]. The ridge is `ridge` times x's mean variance per
  dimension: a CLIP's text outputs span fewer directions than their width (captions are few), and plain
  least squares puts weights of 1e5 on those empty directions, which float16 storage turns into inf."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
    raise ValueError(f"affine_fit needs x [N, D] and y [N, E] with one N, got {x.shape} and {y.shape}")
  x_mean, y_mean = x.mean(axis=0), y.mean(axis=0)
  xc, yc = x - x_mean, y - y_mean
  gram = xc.T @ xc
  lam = ridge * np.trace(gram) / len(gram)
  if lam > 0:
    a = np.linalg.solve(gram + lam * np.eye(len(gram)), xc.T @ yc)
  else:
    a = np.linalg.lstsq(xc, yc, rcond=None)[0]
  c = y_mean - x_mean @ a
  residual = yc - xc @ a
  r2 = 1.0 - float((residual ** 2).sum() / max((yc ** 2).sum(), 1e-30))
  return a, c, r2


def compose_dense(layer: dict, a: np.ndarray, c: np.ndarray) -> dict:
  """The dense layer that applied to x gives what `layer` gives on x @ a + c."""
  kernel, bias = np.asarray(layer["kernel"], np.float64), np.asarray(layer["bias"], np.float64)
  dtype = np.asarray(layer["kernel"]).dtype
  return {"kernel": (a @ kernel).astype(dtype), "bias": (bias + c @ kernel).astype(dtype)}


def remap_text_proj(text_proj: dict, maps: dict[str, tuple[np.ndarray, np.ndarray]], ridge: float = RIDGE
                    ) -> dict:
  """`text_proj` params with each input layer composed with maps[input] = (a, c) (new → old), and the
  no-image embedding moved to the new space: the (ridge) least-squares e with e @ a + c = the old one."""
  out = dict(text_proj)
  for name, layers in INPUT_LAYERS.items():
    a, c = maps[name]
    for layer in layers:
      out[layer] = compose_dense(text_proj[layer], a, c)
  a, c = maps["image_embedding"]
  target = np.asarray(text_proj[NO_IMAGE], np.float64) - c
  gram = a @ a.T
  mu = ridge * np.trace(gram) / len(gram)
  if mu > 0:
    new = np.linalg.solve(gram + mu * np.eye(len(gram)), a @ target)
  else:
    new = np.linalg.lstsq(a.T, target, rcond=None)[0]
  out[NO_IMAGE] = new.astype(np.asarray(text_proj[NO_IMAGE]).dtype)
  return out


def clip_outputs(clip_dir: str | Path, images: np.ndarray, captions: Sequence[str], batch_size: int = 256
                 ) -> dict[str, np.ndarray]:
  """What the embedded dataset would hold for these scenes under CLIP `clip_dir` (the same `ClipEmbedder`
  forward): image_embedding [N, E], text_embedding [N, E], and text_states [M, W] of the M real tokens
  (start and end included)."""
  from unclip_jax.models.clip_encoder import ClipEmbedder, clip_pixels, load_clip, text_mask
  from unclip_jax.models.tokenizer import Tokenizer

  config, params = load_clip(clip_dir)
  embedder = ClipEmbedder(config, params, batch_size)
  tokens = Tokenizer(context_length=config.context_length)(list(captions), config.context_length)
  pixels = np.stack([clip_pixels(im, config.image_size) for im in images])
  parts: dict[str, list] = {"image_embedding": [], "text_embedding": [], "text_states": []}
  for start in range(0, len(pixels), embedder.batch_size):
    sl = slice(start, start + embedder.batch_size)
    out = embedder(pixels[sl], tokens[sl])
    parts["image_embedding"].append(out["image_embedding"])
    parts["text_embedding"].append(out["text_embedding"])
    parts["text_states"].append(out["text_states"][text_mask(tokens[sl])])
  return {k: np.concatenate(v).astype(np.float32) for k, v in parts.items()}


def fit_maps(old: dict[str, np.ndarray], new: dict[str, np.ndarray], ridge: float = RIDGE
             ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, float]]:
  """Per CLIP output: the affine map new → old and its R²."""
  maps, r2 = {}, {}
  for name in INPUT_LAYERS:
    a, c, r2[name] = affine_fit(new[name], old[name], ridge)
    maps[name] = (a, c)
  return maps, r2


def _scenes(data_dir: str, dataset: str, dataset_config: str | None, split: str, num: int):
  """The first `num` (image, caption) pairs of a prepared dataset's split, plus the empty caption (the
  decoder's no-caption branch sees its states too)."""
  from unclip_jax.data import pipeline as data_pipeline
  from unclip_jax.images import to_rgb

  source = data_pipeline.open_source(data_dir, dataset, split, dataset_config)
  n = min(num, len(source))
  examples = [source[i] for i in range(n)]
  images = [to_rgb(ex["image"]) for ex in examples]
  captions = [ex["caption"].decode("utf-8") if isinstance(ex["caption"], bytes) else str(ex["caption"])
              for ex in examples]
  return np.stack(images + images[:1]), captions + [""]


def remap_decoder(decoder: str, old_clip: str, new_clip: str, out: str, *, data_dir: str, dataset: str,
                  dataset_config: str | None = None, split: str = "train", num: int = 4096,
                  ridge: float = RIDGE, log: Callable[[str], None] = print) -> dict[str, float]:
  """Writes `out`: the stage at `decoder` (conditioned on `old_clip`) with its CLIP input layers remapped
  for `new_clip`, fit on `num` scenes of the prepared dataset; returns the R² per CLIP output."""
  from unclip_jax.checkpoint import read_stage, save_stage
  from unclip_jax.models import registry
  from unclip_jax.models.clip_encoder import read_clip_config
  from unclip_jax.pipeline.folder import check_new_folder, load_stage_tree

  if num < 2:
    raise UserError(f"--num must be at least 2 (scenes to fit the maps on), got {num}")
  if not ridge >= 0:
    raise UserError(f"--ridge must be zero or positive, got {ridge}")
  meta = read_stage(decoder, kind="decoder")
  old_config, new_config = read_clip_config(old_clip), read_clip_config(new_clip)
  embed_dim = registry.model_dict("decoder", meta["config"])["clip_embeddings_dim"]
  for what, config in (("--old-clip", old_config), ("--new-clip", new_config)):
    if config.embed_dim != embed_dim:
      raise UserError(f"{what} has {config.embed_dim}-d embeddings but the decoder reads {embed_dim}-d ones; "
                      "remap carries a decoder between CLIPs of its embedding width")
  if old_config.text_width != new_config.text_width:
    raise UserError(f"--old-clip and --new-clip have text towers of width {old_config.text_width} and "
                    f"{new_config.text_width}; remap needs the same width")
  out_path = check_new_folder(out)
  images, captions = _scenes(data_dir, dataset, dataset_config, split, num)
  log(f"fitting new → old CLIP maps on {len(captions) - 1} {dataset} {split} scenes (and the empty caption)")
  maps, r2 = fit_maps(clip_outputs(old_clip, images, captions), clip_outputs(new_clip, images, captions), ridge)
  log("R² of the old CLIP's outputs from the new one's: " + ", ".join(f"{k} {v:.3f}" for k, v in r2.items()))
  tree, which = load_stage_tree(Path(decoder), "decoder", meta, ema=True, log=log)
  tree = {**tree, "text_proj": remap_text_proj(tree["text_proj"], maps, ridge)}
  keep = {k: v for k, v in meta.items() if k in ("step", "source")}
  provenance = {"remapped_from": str(Path(decoder).absolute()), "old_clip": str(Path(old_clip).absolute()),
                "new_clip": str(Path(new_clip).absolute()), "weights": which, "r2": r2, "ridge": ridge,
                "fit": {"data_dir": str(Path(data_dir).absolute()), "dataset": dataset,
                        "dataset_config": dataset_config, "split": split, "num": len(captions) - 1}}
  if out_path.exists():
    out_path.rmdir()  # empty (check_new_folder); save_stage writes the folder whole
  save_stage(out_path, tree, kind="decoder", config=meta["config"],
             extra={**keep, "ema": False, "weights": which, "remap": provenance})
  log(f"wrote {out_path} ({which} weights, remapped); fine-tune it with --config.train.init_from={out_path}")
  return r2
