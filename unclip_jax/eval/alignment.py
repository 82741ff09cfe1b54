"""The clip_score suite: CLIP score and R-precision of generated images, graded by the evaluator CLIP.

The evaluator is a CLIP trained apart from the generator (`clip_eval.py`: its own seed and data mix),
or the folder given with --eval-clip. R-precision ranks each image's caption among itself and 99 other
shapes captions. Real renders of the same captions give the ceiling. The generator's own CLIP is
reported too, labelled as biased (its prior and decoder were trained on that very embedding space).
"""

from __future__ import annotations

import numpy as np

from unclip_jax.eval import prompts, retrieval
from unclip_jax.eval.clip_eval import distractor_captions
from unclip_jax.eval.stats import proportion


def score(scorer, images, captions, distractors) -> dict:
  img = scorer.encode_images(images)
  txt = scorer.encode_captions(captions)
  k = len(distractors[0])
  dtxt = scorer.encode_captions([c for row in distractors for c in row]).reshape(len(captions), k, -1)
  hits = retrieval.r_precision_hits(img, txt, dtxt)
  return {"clip_score": retrieval.clip_score(img, txt), "r_precision": proportion(hits), "candidates": k + 1}


def run(ctx) -> dict:
  o = ctx.options
  evaluator, info = ctx.eval_clip
  out = {"evaluator_clip": info, "splits": {}}
  for split in prompts.SPLITS:
    cell = ctx.mixed(split)
    captions, real, gen = cell["captions"], cell["real"], cell["generated"]
    distractors = distractor_captions(captions, 99, o.seed + (split == "heldout"))
    out["splits"][split] = {
        "generated": score(evaluator, gen, captions, distractors),
        "real_ceiling": score(evaluator, real, captions, distractors),
        "generator_clip_generated": score(ctx.generator_clip, gen, captions, distractors),
        "generator_clip_real": score(ctx.generator_clip, real, captions, distractors),
        "num": o.num,
    }
  out["note"] = ("graded by the evaluator CLIP; generator_clip_* use the generator's own CLIP (biased in its favour, "
                 "for comparison only)")
  return out


def clip_score_of(ctx, images: np.ndarray, captions: list[str]) -> float:
  """The evaluator CLIP's score of images against their captions (the guidance suite's y axis)."""
  scorer, _ = ctx.eval_clip
  return retrieval.clip_score(scorer.encode_images(images), scorer.encode_captions(captions))
