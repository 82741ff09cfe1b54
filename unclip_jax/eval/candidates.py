"""The candidates suite: how well does the pipeline choose among its decoder candidates?

With decoder candidates K > 1 the pipeline draws each image K times and keeps the one its rater (the
`rerank_clip` stage, else its CLIP) puts nearest the caption; the compositional suite grades only that one.
Here every candidate of the compositional suite's drawing cells (its prompts and seeds; negation left out,
it fails by design) is drawn, upsampled and graded by the detector, and each rater's choice is read off:

  any_right    some candidate is right: the ceiling of any rater on these drawings
  first_right  candidate 0 is right: the image drawn without candidates (no reranking)
  random_pick  the mean over candidates: what a rater blind to the caption scores
  pick         the rater's choice is right (for the pipeline's rater, the compositional suite's accuracy)
  auc          over the prompts with right and wrong candidates, the chance that a right one is rated above a
               wrong one (ties count half): how well the rater sorts, beyond its top choice

Raters: the pipeline's; also its own CLIP where a rerank_clip stage does the rating; and any CLIP stage
folder given with `--rerank-clip`. The drawings are kept in OUT/candidates.npz: a later run into the same
folder on the same pipeline, prompts and sampling settings rates them again without drawing, so trying
another rater takes a minute instead of the K-fold sampling (K times the compositional suite's decoder and
upsampler work over four of its five tasks). Where the pipeline rates its candidates after the upsamplers
(`rate_upsampled`), every rater rates the output images: as drawn, or from the file their 64 px uint8 copies
(whose rounding can turn a near tie the other way).
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Sequence

import numpy as np

from unclip_jax.errors import UserError
from unclip_jax.eval import compositional, prompts
from unclip_jax.eval.stats import proportion

TASKS = ("single", "binding", "counting", "position")
FILE = "candidates.npz"


def check(settings: dict) -> None:
  """A UserError before any work when the pipeline keeps one drawing per image: nothing to choose among."""
  if settings["decoder"].candidates < 2:
    raise UserError("the candidates suite rates the decoder's candidates, and these settings draw 1 per image; "
                    "pass --decoder-candidates K with K of 2 or more")


def auc(passes: np.ndarray, scores: np.ndarray) -> tuple[float | None, int]:
  """(mean within-prompt AUC, prompts it averages over): per prompt with right and wrong candidates, the
  share of (right, wrong) pairs the scores order right, ties counting half."""
  values = []
  for right, s in zip(passes, scores, strict=True):
    if right.any() and not right.all():
      hi, lo = s[right][:, None], s[~right][None]
      values.append(float(np.mean((hi > lo) + 0.5 * (hi == lo))))
  return (float(np.mean(values)) if values else None), len(values)


def summarize(passes: np.ndarray, scores: dict[str, np.ndarray]) -> dict:
  """One cell: passes (N, K) bool, scores {rater: (N, K)}."""
  rows = np.arange(len(passes))
  out = {"any_right": proportion(passes.any(1)), "first_right": proportion(passes[:, 0]),
         "random_pick": float(passes.mean()), "raters": {}}
  for name, s in scores.items():
    value, n = auc(passes, s)
    out["raters"][name] = {"pick": proportion(passes[rows, s.argmax(1)]), "auc": value, "auc_prompts": n}
  return out


def tasks(options) -> tuple[str, ...]:
  """The tasks to draw: evaluate's --tasks (negation refused there), else all four."""
  return tuple(options.tasks) or TASKS


def means(cells: dict, raters: list[str]) -> dict:
  """Per split, each rate's mean over the tasks (as the compositional suite's bar reads its tasks)."""
  out = {}
  for split in prompts.SPLITS:
    row = [cells[t][split] for t in TASKS if t in cells]
    out[split] = {"any_right": float(np.mean([c["any_right"]["rate"] for c in row])),
                  "first_right": float(np.mean([c["first_right"]["rate"] for c in row])),
                  "random_pick": float(np.mean([c["random_pick"] for c in row])),
                  "pick": {r: float(np.mean([c["raters"][r]["pick"]["rate"] for c in row])) for r in raters}}
  return out


def draws_key(ctx, settings: dict, k: int) -> str:
  """What the drawings depend on: the pipeline's weights, the sampling settings, prompts, seeds and K."""
  content = {"pipeline": ctx.options.pipeline_digest, "settings": {s: v.to_dict() for s, v in settings.items()},
             "num": ctx.options.num, "seed": ctx.options.seed, "k": k, "tasks": tasks(ctx.options)}
  return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


def draw_all(ctx, captions: list[str], seeds: list[int], k: int, rate_output: Sequence = ()) -> tuple:
  """(candidates at the decoder's size in [-1, 1] (N, K, h, w, 3), final uint8 images at the detector's 64 px
  (N, K, 64, 64, 3), passes (N, K), {rater name: scores (N, K)} of each of `rate_output` on the output images):
  `ctx.options.batch` prompts at a time (`ctx.chunked`); finals are kept at 64 px (what the detector grades) and
  outputs rated as they are drawn, so 1024 px outputs fit in memory."""
  from unclip_jax.eval.images import resize
  from unclip_jax.images import to_uint8
  from unclip_jax.pipeline import candidates

  settings, pipe = ctx.settings(), ctx.pipe

  def chunk(p, s):
    drawn = candidates.draw(pipe, p, s, settings, k)
    output = candidates.upsample(pipe, drawn["small"], drawn["keys"], settings)
    scores = {r.name: r.scores(output, p) for r in rate_output}
    up = to_uint8(output)
    at_64 = resize(up.reshape((-1,) + up.shape[2:]), prompts.IMAGE_SIZE)
    return drawn["small"], at_64.reshape((len(p), k) + at_64.shape[1:]), scores
  parts, n = ctx.chunked(chunk, captions, seeds, desc="candidates")  # the last batch padded: one compile per stage
  small, final = (np.concatenate([part[i] for part in parts])[:n] for i in (0, 1))
  scores = {r.name: np.concatenate([part[2][r.name] for part in parts])[:n] for r in rate_output}
  flat = compositional.grade(final.reshape((-1,) + final.shape[2:]), [c for c in captions for _ in range(k)])
  passes = np.array([c["pass"] for c in flat], bool).reshape(len(captions), k)
  return small, final, passes, scores


def _saved(path, key: str):
  """(small, passes, final) from a candidates.npz written for `key`, else None."""
  if path is None or not path.is_file():
    return None
  try:
    with np.load(path) as f:
      if str(f["key"]) != key:
        return None
      return f["small"], f["passes"], f["final"]
  except (OSError, ValueError, KeyError):  # unreadable or from another version: draw again
    return None


def _save(path, key: str, small: np.ndarray, passes: np.ndarray, final: np.ndarray, captions: list[str]) -> None:
  from unclip_jax.io import write_bytes_atomic

  buf = io.BytesIO()
  np.savez_compressed(buf, key=np.array(key), small=small, passes=passes, final=final, captions=np.array(captions))
  write_bytes_atomic(path, buf.getvalue())


def grid(final: np.ndarray, passes: np.ndarray, captions: list[str], scores: np.ndarray) -> tuple:
  """(images, passed, labels, layout) of the first prompts' candidates, one prompt per row of K, the one the
  pipeline's rater keeps marked (a blue top edge) and named in its label (`report.write` draws it)."""
  rows, k = min(max(1, 32 // final.shape[1]), len(captions)), final.shape[1]
  kept = [j == scores[i].argmax() for i in range(rows) for j in range(k)]
  labels = [f"{captions[i]}  [candidate {j}{', kept' if kept[i * k + j] else ''}]"
            for i in range(rows) for j in range(k)]
  return (final[:rows].reshape((-1,) + final.shape[2:]), passes[:rows].reshape(-1).tolist(), labels,
          {"columns": k, "marked": kept})


def raters(ctx) -> list:
  from unclip_jax.pipeline.candidates import Rater

  out = [Rater.of_pipeline(ctx.pipe)]
  if ctx.pipe.rerank_clip is not None:
    out.append(Rater.of_pipeline(ctx.pipe, own_clip=True))
  return out + [Rater.from_stage(folder, ctx.log) for folder in ctx.options.raters]


def run(ctx) -> dict:
  from unclip_jax.pipeline.engine import rates_upsampled

  o = ctx.options
  settings = ctx.settings()
  check(settings)
  k = settings["decoder"].candidates
  rating = raters(ctx)  # a bad --rerank-clip folder fails here, before the drawing
  cells = [(task, split) for task in tasks(o) for split in prompts.SPLITS]
  sets = {c: prompts.task_set(c[0], c[1], o.num, o.seed)[0] for c in cells}
  captions = [cap for c in cells for cap in sets[c]]
  seeds = [s for c in cells for s in prompts.image_seeds(f"compositional/{c[0]}/{c[1]}", o.num, o.seed)]
  key = draws_key(ctx, settings, k)
  path = o.draws_dir / FILE if o.draws_dir is not None else None
  saved = _saved(path, key) if o.pipeline_digest else None
  late = rates_upsampled(ctx.pipe, settings["decoder"])  # rated where the pipeline rates them
  if saved is not None:
    small, passes, final = saved
    ctx.log(f"candidates: the drawings in {path} rated again (same pipeline, prompts and sampling)")
  else:  # with `late` the output images are rated as they are drawn (too large to keep for 1024 px)
    small, final, passes, rated = draw_all(ctx, captions, seeds, k, rate_output=rating if late else ())
    if path is not None:
      _save(path, key, small, passes, final, captions)
  if saved is not None or not late:  # rated here: the saved 64 px finals, or the decoder's drawings
    images = final.astype(np.float32) / 127.5 - 1.0 if late else small
    rated = {r.name: r.scores(images, captions) for r in rating}
  results, grids, names = {}, {}, list(rated)
  for i, (task, split) in enumerate(cells):
    part = slice(i * o.num, (i + 1) * o.num)
    results.setdefault(task, {})[split] = summarize(passes[part], {n: s[part] for n, s in rated.items()})
    if split == "heldout":
      grids[f"{task}_{split}"] = grid(final[part], passes[part], sets[(task, split)], rated[names[0]][part])
  return {"k": k, "num_per_cell": o.num, "used_by_pipeline": names[0], "raters": names, "tasks": results,
          "overall": means(results, names), "drawings": str(path) if path is not None else None, "_grids": grids}
