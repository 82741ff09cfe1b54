"""The stages suite: which stage loses the single-object accuracy, the prior, the decoder or an upsampler?

The compositional suite grades the whole chain (caption → prior → decoder → upsamplers). Here each stage
gets a perfect input instead of the one before it, on the same single-object prompts and sampling seeds:

  decoder_from_true_embedding   the decoder (with the caption) given the CLIP image embedding of the
                                caption's real render, then the upsamplers: no prior in the chain
  upsampler_from_true_image     the upsamplers given the caption's real render at the decoder's size:
                                no prior and no decoder
  real_ceiling                  the real 64 px renders

So (compositional single accuracy) < decoder_from_true_embedding points at the prior, a low
decoder_from_true_embedding with a high upsampler_from_true_image at the decoder, and a low
upsampler_from_true_image at the upsamplers. Single objects only: one object isolates drawing from
composition, and the suite then costs about a fifth of the compositional sampling.
"""

from __future__ import annotations

import numpy as np

from unclip_jax.eval import compositional, prompts
from unclip_jax.eval.images import resize

TASK = "single"


def _renders(captions: list[str], real: np.ndarray, split: str, o, size: int) -> np.ndarray:
  """The same scenes rendered natively at `size` px (one object: the layout draws repeat at any size), as
  the training data is; below the scene generator's 24 px, the 64 px renders resized (as tiny data is)."""
  if size < 24:
    return resize(real, size)
  again, images, _ = prompts.task_set(TASK, split, o.num, o.seed, image_size=size)
  if again != captions:  # pragma: no cover - guards the scene generator's determinism across sizes
    raise RuntimeError(f"the {split} {TASK} scenes differ at {size} px")
  return images


def run(ctx) -> dict:
  from unclip_jax.images import to_uint8
  from unclip_jax.pipeline import image_keys

  o, pipe = ctx.options, ctx.pipe
  settings = ctx.settings()
  out = {"task": TASK, "num": o.num, "splits": {}, "skipped": {}}
  grids = {}
  has_image_tower = pipe.clip_config.image_tower
  if not has_image_tower:
    out["skipped"]["decoder_from_true_embedding"] = "the pipeline's CLIP has no image encoder"
  if not pipe.srs:
    out["skipped"]["upsampler_from_true_image"] = "the pipeline has no upsampler"
  for split in prompts.SPLITS:
    # The compositional suite's prompts and seeds for this cell, so its accuracy reads against these rows.
    captions, real, _ = prompts.task_set(TASK, split, o.num, o.seed)
    seeds = prompts.image_seeds(f"compositional/{TASK}/{split}", o.num, o.seed)
    cell = {"real_ceiling": compositional.summarize(compositional.grade(real, captions), TASK)["accuracy"]}
    if has_image_tower:
      at_clip_size = _renders(captions, real, split, o, pipe.clip_config.image_size)
      embeds = pipe.encode_images(at_clip_size, batch=o.batch)
      images = pipe.decode_embeddings(embeds, seeds, settings, prompts=captions, batch=o.batch)["images"]
      checks = compositional.grade(images, captions)
      summary = compositional.summarize(checks, TASK, captions)
      cell["decoder_from_true_embedding"] = summary["accuracy"]
      cell["decoder_from_true_embedding_by_object"] = summary["by_object"]
      grids[f"decoder_from_true_embedding_{split}"] = compositional.grid(images, checks, captions)
    if pipe.srs:
      small = _renders(captions, real, split, o, pipe.image_size).astype(np.float32) / 127.5 - 1.0
      parts, n = ctx.chunked(lambda x, k: pipe.upsample(x, k, settings), small, image_keys(seeds))
      images = to_uint8(np.concatenate(parts)[:n])
      checks = compositional.grade(images, captions)
      cell["upsampler_from_true_image"] = compositional.summarize(checks, TASK)["accuracy"]
      grids[f"upsampler_from_true_image_{split}"] = compositional.grid(images, checks, captions)
    out["splits"][split] = cell
  out["_grids"] = grids
  return out
