"""What every suite shares: the loaded pipeline, the options, the evaluators (loaded or trained once)
and a cache of generated images, so `--suite all` never samples or trains the same thing twice.

Generation runs in chunks of `batch` prompts (the last one padded by repeating its last prompt), so a whole
evaluation compiles one sampling program per setting of steps/sampler; guidance scales are program
arguments and do not recompile. A call with fewer prompts than a batch (the guidance suite's) gets its own
program, as small as the devices allow, rather than a batch of repeated rows.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from functools import cached_property
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from unclip_jax.eval.clip_eval import EvalClipConfig
from unclip_jax.eval.features import FeatureNetConfig

DECODER_GUIDANCE = (1.0, 2.0, 3.0, 4.0, 6.0, 8.0)
PRIOR_GUIDANCE = (1.0, 4.0)


@dataclasses.dataclass
class Options:
  num: int = 100  # prompts per cell (a task x split of the compositional suite, a split elsewhere)
  seed: int = 0
  batch: int = 32  # images per sampling call
  cache_dir: Path = Path.home() / ".cache" / "unclip_jax" / "eval"
  eval_clip: str | None = None  # a CLIP stage folder to grade with; None: train (or reuse) the evaluator CLIP
  feature_net: FeatureNetConfig = FeatureNetConfig()
  eval_clip_config: EvalClipConfig = EvalClipConfig()
  decoder_guidance: tuple[float, ...] = DECODER_GUIDANCE
  prior_guidance: tuple[float, ...] = PRIOR_GUIDANCE
  guidance_num: int | None = None  # prompts per guidance setting (default: num)
  train_ref: int = 1000  # training-distribution images for the memorisation check
  dataset_seed: int = 0  # the seed the generator's shapes data was built with (the builder's default 0)
  overrides: dict = dataclasses.field(default_factory=dict)  # sampling settings for every suite but guidance
  zeroshot_extra: bool = True  # also fashion_mnist and emoji probes, when their data is installed
  progress: bool = True
  raters: tuple[str, ...] = ()  # candidates suite: CLIP stage folders that rate the candidates beside the pipeline's
  tasks: tuple[str, ...] = ()  # compositional and candidates suites: the tasks to draw (empty: all of the suite's)
  draws_dir: Path | None = None  # where a suite may keep its drawings for a later run (evaluate's --out)
  pipeline_digest: str = ""  # the pipeline's weights and sampling (evaluate's fingerprint); "" reuses no drawings


class Context:
  def __init__(self, pipe, options: Options, log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)):
    self.pipe, self.options, self.log = pipe, options, log
    self._generated: dict = {}
    self._mixed: dict = {}

  # ------------------------------------------------------------------------------------- evaluators

  @cached_property
  def feature_net(self):
    from unclip_jax.eval import features

    return features.load_or_train(self.options.cache_dir, self.options.feature_net, self.log, self.options.progress)

  @cached_property
  def eval_clip(self):
    """(ClipScorer, info): the CLIP stage given with --eval-clip, else the cached/trained evaluator."""
    from unclip_jax.eval import clip_eval

    if self.options.eval_clip:
      scorer, info = clip_eval.load(self.options.eval_clip, self.log)
      own = self.pipe_clip_path()
      if own and Path(self.options.eval_clip).resolve() == Path(own).resolve():
        info["warning"] = "this is the generator's own CLIP: its scores are biased in the generator's favour"
      return scorer, info
    return clip_eval.load_or_train(self.options.cache_dir, self.options.eval_clip_config, self.log,
                                   self.options.progress)

  @cached_property
  def generator_clip(self):
    """The generator's own CLIP, for clearly labelled comparisons (never the primary grade)."""
    from unclip_jax.eval.clip_eval import ClipScorer

    p = self.pipe
    return ClipScorer(p.clip_config, p.clip_params, "generator (biased: the prior and decoder were trained on it)",
                      p.tokenizer)

  def pipe_clip_path(self) -> str:
    from unclip_jax.errors import UserError
    from unclip_jax.pipeline import read_pipeline

    try:
      return str(read_pipeline(self.pipe.name)["paths"]["clip"])
    except (UserError, KeyError, TypeError):  # an in-memory pipeline has no folder
      return ""

  # ------------------------------------------------------------------------------------- generation

  def settings(self, overrides: dict | None = None) -> dict:
    merged = {s: dict(v) for s, v in self.options.overrides.items()}
    for stage, d in (overrides or {}).items():
      merged.setdefault(stage, {}).update(d)
    return self.pipe.settings(merged)

  def generate(self, prompts: Sequence[str], seeds: Sequence[int], overrides: dict | None = None,
               desc: str = "sampling") -> np.ndarray:
    """uint8 images (N, S, S, 3) at the pipeline's output size; cached per (prompts, seeds, settings)."""
    prompts, seeds = list(prompts), [int(s) for s in seeds]
    settings = self.settings(overrides)
    key = (tuple(prompts), tuple(seeds), json.dumps({k: v.to_dict() for k, v in settings.items()}, sort_keys=True))
    if key in self._generated:
      return self._generated[key]
    # Chunks of `batch` prompts share one compiled program; fewer prompts than that (the guidance suite's few per
    # setting) run unpadded, rounded up to the device count, not padded to a whole batch of wasted rows.
    b = min(self.options.batch, self.pipe.padded_batch(len(prompts)))
    out, n = self.chunked(lambda p, s: self.pipe.generate(p, s, settings, batch=b)["images"], prompts, seeds,
                          batch=b, desc=desc)
    images = np.concatenate(out)[:n]
    self._generated[key] = images
    return images

  def prompt_set(self, split: str) -> dict:
    """The shared prompt set of a split ("seen" / "heldout"): `num` captions of every kind (negation
    included) with their real renders, specs and sampling seeds (fd, clip_score and prior use it)."""
    from unclip_jax.data import shapes
    from unclip_jax.eval import prompts

    if split not in self._mixed:
      o = self.options
      captions, real, specs = prompts.mixed_set(split, o.num, o.seed, "mixed", kinds=shapes.ALL_KINDS)
      self._mixed[split] = {"captions": captions, "real": real, "specs": specs,
                            "seeds": prompts.image_seeds(f"mixed/{split}", o.num, o.seed)}
    return self._mixed[split]

  def mixed(self, split: str) -> dict:
    """`prompt_set(split)` with "generated" images; both splits are sampled together, once."""
    cell = self.prompt_set(split)
    if "generated" not in cell:
      seen, held = self.prompt_set("seen"), self.prompt_set("heldout")
      images = self.generate(seen["captions"] + held["captions"], seen["seeds"] + held["seeds"], desc="shared prompts")
      seen["generated"], held["generated"] = images[:len(seen["captions"])], images[len(seen["captions"]):]
    return cell

  def chunked(self, fn, *arrays, batch: int | None = None, desc: str = ""):
    """fn over fixed-size chunks of the arrays (`batch`, default --batch; the last padded by repeating its last
    row), in order: one compiled shape. Returns (fn's outputs, number of real rows); with `desc`, a progress bar."""
    from tqdm.auto import tqdm

    b = batch or self.options.batch
    n = len(arrays[0])
    out = []
    for lo in tqdm(range(0, n, b), desc=desc, unit="batch", leave=False, disable=not (desc and self.options.progress)):
      parts = []
      for a in arrays:
        chunk = a[lo:lo + b]
        pad = b - len(chunk)
        if pad:
          chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)]) if isinstance(chunk, np.ndarray) \
              else list(chunk) + [chunk[-1]] * pad
        parts.append(chunk)
      out.append(fn(*parts))
    return out, n
