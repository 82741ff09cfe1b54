"""Every decoder candidate of an image, drawn one by one and rated outside the whole program.

With decoder candidates K > 1 the whole program (`Pipeline.generate`) draws each image K times and keeps
only the one its rater (the `rerank_clip` stage where there is one, else the pipeline's CLIP) puts nearest
the caption. Measuring a rater needs all K: `draw` redraws them stage by stage with the program's keys
(candidate k here is the program's k-th), `upsample` takes each to the output size, and `Rater.scores`
rates them with the program's own scorer, so the pipeline rater's argmax is the image `generate` returns
(given the `upsample` output where the decoder settings have `rate_upsampled`, the small ones otherwise).
"""

from __future__ import annotations

import dataclasses
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from unclip_jax.pipeline import programs


def draw(pipe, prompts: Sequence[str], seeds: Sequence[int], settings: dict, k: int) -> dict:
  """{"small": every candidate at the decoder's size in [-1, 1] (B, K, h, w, 3), "image_embeds": the prior's
  samples (B, E), "keys": the image keys (B, 2)}: the prior once per caption, as `generate` samples it."""
  text = pipe.encode_text(list(prompts))
  keys = programs.image_keys(seeds)
  embeds = pipe.sample_prior(text, keys, settings["prior"], candidates=settings["prior"].candidates)
  single = dataclasses.replace(settings["decoder"], candidates=1)
  per_candidate = np.asarray(jax.vmap(lambda key: programs.candidate_keys(key, k))(jnp.asarray(keys)), np.uint32)
  small = np.stack([pipe.decode(embeds, text, per_candidate[:, c], single) for c in range(k)], axis=1)
  return {"small": small, "image_embeds": embeds, "keys": keys}


def upsample(pipe, small: np.ndarray, keys: np.ndarray, settings: dict) -> np.ndarray:
  """Each candidate (B, K, h, w, 3) through the upsamplers with its image's key, as the program upsamples
  the one it keeps: (B, K, S, S, 3) in [-1, 1] at the output size."""
  if not pipe.srs:
    return small
  return np.stack([pipe.upsample(small[:, c], keys, settings) for c in range(small.shape[1])], axis=1)


@dataclasses.dataclass
class Rater:
  """A CLIP that rates candidates: its image tower on each (decoder-size, bicubically resized to its input)
  against its own text tower on the caption, by cosine (`programs.clip_scorer`)."""
  name: str
  clip: Any
  config: Any
  params: Any
  tokenize: Callable[[list[str]], np.ndarray]

  @classmethod
  def of_pipeline(cls, pipe, own_clip: bool = False) -> Rater:
    """What `generate` rates with: the `rerank_clip` stage, or (none, or `own_clip`) the pipeline's CLIP."""
    if pipe.rerank_clip is not None and not own_clip:
      return cls("pipeline's rerank_clip", pipe.rerank_clip, pipe.rerank_config, pipe.rerank_params, pipe.tokenize)
    return cls("pipeline's CLIP", pipe.clip, pipe.clip_config, pipe.clip_params, pipe.tokenize)

  @classmethod
  def from_stage(cls, folder: str | Path, log: Callable[[str], None] = lambda m: None) -> Rater:
    """Any CLIP stage folder with an image tower (its EMA weights where it has them); a UserError otherwise."""
    from unclip_jax.checkpoint import read_stage
    from unclip_jax.errors import UserError
    from unclip_jax.models import clip as clip_model
    from unclip_jax.models.clip_encoder import read_clip_config
    from unclip_jax.models.tokenizer import Tokenizer
    from unclip_jax.pipeline.folder import load_stage_tree

    config = read_clip_config(folder)
    if not config.image_tower:
      raise UserError(f"{folder} is a text encoder only; rating images needs a CLIP with an image tower")
    params, _ = load_stage_tree(Path(folder), "clip", read_stage(folder, kind="clip"), ema=True, log=log)
    tokenizer = Tokenizer(context_length=config.context_length)
    return cls(str(folder), clip_model.CLIP(config), config, params,
               lambda captions: tokenizer(list(captions), config.context_length))

  @cached_property
  def _program(self):
    from unclip_jax.models import clip_encoder

    score = programs.clip_scorer(self.clip, self.config)
    text = clip_encoder.text_encoder(self.clip)
    return jax.jit(lambda p, images, tokens: jax.vmap(score, in_axes=(None, 0, 0))(
        p, images, text(p, tokens)[0].astype(jnp.float32)))

  def scores(self, small: np.ndarray, prompts: Sequence[str], rows: int = 16) -> np.ndarray:
    """Cosines (B, K) of each candidate with its caption; computed `rows` images at a time (one compile)."""
    tokens = self.tokenize(list(prompts))
    out = []
    for lo in range(0, len(small), rows):
      x, t = small[lo:lo + rows], tokens[lo:lo + rows]
      pad = rows - len(x)
      if pad:
        x, t = (np.concatenate([a, np.repeat(a[-1:], pad, axis=0)]) for a in (x, t))
      out.append(np.asarray(self._program(self.params, np.asarray(x, np.float32), t))[:rows - pad])
    return np.concatenate(out).astype(np.float64)
