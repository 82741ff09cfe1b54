"""The evaluator CLIP: a CLIP trained apart from the generator's, to grade text-image agreement.

Why a separate CLIP: a generator whose prior and decoder were trained on its own CLIP's embeddings is
graded too kindly by that CLIP (it optimises exactly that embedding space). The evaluator here is the
`tiny` preset trained with the project's contrastive loss (`train.contrastive.clip_softmax_loss`) on
procedurally drawn scenes of its own seed (never the dataset's seed 0), all caption kinds (negation
included) and both splits (so held-out colour-shape pairs are in its vocabulary of images). It is saved
as an ordinary CLIP stage checkpoint in the cache folder (reused), or any CLIP stage folder can be given
instead. `ClipScorer` wraps any CLIP (evaluator or generator) for embedding images and captions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from unclip_jax.data import shapes

FORMAT = 1  # bump when the evaluator CLIP's training changes: cached checkpoints are keyed by it


@dataclasses.dataclass(frozen=True)
class EvalClipConfig:
  preset: str = "tiny"
  steps: int = 2000
  batch_size: int = 128
  lr: float = 2e-3
  pool: int = 8000
  check_size: int = 500  # fresh scenes its own R-precision is measured on
  render_size: int = 64  # scenes are drawn at 64 px and resized to the CLIP's input, as generated ones are
  seed: int = 0  # the scenes use seed 0xC11F + seed

  def key(self) -> str:
    """The cache folder's name: the config and the recipe's FORMAT (bumped whenever training changes)."""
    fields = {**dataclasses.asdict(self), "format": FORMAT}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


class ClipScorer:
  """Embeds uint8 images (any size; resized to the CLIP's) and captions with one CLIP."""

  def __init__(self, config, params, name: str, tokenizer=None):
    import jax

    from unclip_jax.models import clip as clip_model
    from unclip_jax.models.clip_encoder import image_encoder, text_encoder
    from unclip_jax.models.tokenizer import Tokenizer

    self.config, self.params, self.name = config, params, name
    self.tokenizer = tokenizer or Tokenizer(context_length=config.context_length)
    model = clip_model.CLIP(config)
    self._image = jax.jit(image_encoder(model, config))
    self._text = jax.jit(lambda p, t: text_encoder(model)(p, t)[0])

  def _batched(self, fn, x, batch=256):
    out = []
    for lo in range(0, len(x), batch):
      chunk = x[lo:lo + batch]
      pad = batch - len(chunk) if len(x) > batch else 0  # one compiled shape for long inputs
      full = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)]) if pad else chunk
      out.append(np.asarray(fn(self.params, full))[:len(chunk)])
    return np.concatenate(out).astype(np.float64)

  def encode_images(self, images: np.ndarray) -> np.ndarray:
    from unclip_jax.eval.images import resize
    return self._batched(self._image, resize(images, self.config.image_size))

  def encode_text(self, captions: Sequence[str]) -> np.ndarray:
    return self._batched(self._text, self.tokenizer(list(captions), self.config.context_length))

  def encode_captions(self, captions: Sequence[str]) -> np.ndarray:
    """`encode_text` that encodes each distinct caption once (distractor lists repeat captions a lot)."""
    unique = list(dict.fromkeys(captions))
    emb = self.encode_text(unique)
    index = {c: i for i, c in enumerate(unique)}
    return emb[[index[c] for c in captions]]

  def zero_shot(self, images: np.ndarray, labels: Sequence[str], templates: Sequence[str]) -> np.ndarray:
    """Predicted label indices (N,): each class embedding is the renormalised mean of its L2-normalised
    template embeddings (CLIP's prompt ensembling, as `unclip_jax.zeroshot`), the prediction the
    class of highest cosine with the image."""
    emb = self.encode_text([t.format(l) for l in labels for t in templates])
    emb = (emb / np.linalg.norm(emb, axis=-1, keepdims=True)).reshape(len(labels), len(templates), -1).mean(1)
    img = self.encode_images(images)
    return (img @ emb.T / np.linalg.norm(img, axis=-1, keepdims=True) / np.linalg.norm(emb, axis=-1)).argmax(-1)


def scenes(n: int, size: int, seed: int, start: int = 0):
  """(images, captions): 80% train-split and 20% held-out-split scenes, all caption kinds."""
  n_held = n // 5
  a = shapes.ShapesScenes(size, "train", seed, shapes.ALL_KINDS).batch(start, n - n_held)
  b = shapes.ShapesScenes(size, "heldout", seed, shapes.ALL_KINDS).batch(start, n_held)
  return np.concatenate([a[0], b[0]]), a[1] + b[1]


def train(config: EvalClipConfig, log: Callable[[str], None] = print, progress: bool = True):
  """(CLIPConfig, params, meta): the evaluator CLIP trained on one device with AdamW."""
  import jax
  import optax
  from tqdm.auto import tqdm

  from unclip_jax.eval.images import resize
  from unclip_jax.models import clip as clip_model
  from unclip_jax.models.tokenizer import Tokenizer
  from unclip_jax.train import contrastive

  start = time.perf_counter()
  cfg = clip_model.PRESETS[config.preset]
  data_seed = 0xC11F + config.seed
  images, captions = scenes(config.pool, config.render_size, data_seed)
  x_all = resize(images, cfg.image_size)
  tokenizer = Tokenizer(context_length=cfg.context_length)
  tokens = tokenizer(captions, cfg.context_length)
  model = clip_model.CLIP(cfg)
  params = clip_model.init_params(cfg, jax.random.key(config.seed))
  tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, config.lr, min(100, config.steps // 10 + 1), config.steps,
                                                      config.lr / 20), weight_decay=0.0)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, x, t):
    def loss_fn(p):
      out = model.apply({"params": p}, clip_model.normalize_images(x, cfg), t)
      return contrastive.clip_softmax_loss(out["image_embeds"], out["text_embeds"], out["logit_scale"])
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return contrastive.clamp_logit_scale(optax.apply_updates(params, updates)), opt_state, loss

  rng = np.random.default_rng(config.seed)
  losses = []
  bar = tqdm(range(config.steps), desc="evaluator CLIP", unit="step", leave=False, disable=not progress)
  for i in bar:
    idx = rng.choice(len(x_all), min(config.batch_size, len(x_all)), replace=False)
    params, opt_state, loss = step(params, opt_state, x_all[idx], tokens[idx])
    if i % 50 == 0 or i == config.steps - 1:
      losses.append(float(loss))
      bar.set_postfix(loss=f"{losses[-1]:.3f}")
  params = jax.device_get(params)
  train_s = time.perf_counter() - start
  meta = {"evaluator": dataclasses.asdict(config), "train_seconds": round(train_s, 1), "loss_first": losses[0],
          "loss_last": losses[-1],
          "data": f"shapes scenes, seed {data_seed}, all kinds, 80% train / 20% held-out split"}
  scorer = ClipScorer(cfg, params, "evaluator")
  meta["self_check"] = self_check(scorer, config.render_size, data_seed + 1, config.check_size)
  log(f"evaluator CLIP: {config.steps} steps in {train_s:.0f}s; on fresh real scenes {meta['self_check']}")
  return cfg, params, meta


def self_check(scorer: ClipScorer, size: int, seed: int, n: int = 500) -> dict:
  """The evaluator's own R-precision (among 100) and CLIP score on fresh real scenes."""
  from unclip_jax.eval import retrieval

  images, captions = scenes(n, size, seed)
  img, txt = scorer.encode_images(images), scorer.encode_captions(captions)
  distractors = distractor_captions(captions, 99, seed)
  dtxt = scorer.encode_captions([c for row in distractors for c in row]).reshape(len(captions), 99, -1)
  return {"r_precision": retrieval.r_precision(img, txt, dtxt), "clip_score": retrieval.clip_score(img, txt), "n": n}


def distractor_captions(captions: Sequence[str], k: int, seed: int) -> list[list[str]]:
  """For each caption, k other captions (distinct from it and from each other) drawn from a pool of
  fresh scene captions of both splits and all kinds."""
  pool_scenes = [shapes.ShapesScenes(32, split, seed + 17, shapes.ALL_KINDS) for split in ("train", "heldout")]
  pool = list(dict.fromkeys(pool_scenes[i % 2][i // 2][1] for i in range(max(4 * k, 600))))
  rng = np.random.default_rng(seed)
  out = []
  for c in captions:
    others = [p for p in pool if p != c]
    out.append([others[j] for j in rng.choice(len(others), k, replace=False)])
  return out


def load_or_train(cache_dir: str | Path, config: EvalClipConfig = EvalClipConfig(),
                  log: Callable[[str], None] = print, progress: bool = True) -> tuple[ClipScorer, dict]:
  """The cached evaluator CLIP of this config (a CLIP stage checkpoint), trained and saved if absent."""
  from unclip_jax.checkpoint import save_stage

  folder = Path(cache_dir) / f"eval_clip_{config.key()}"
  if not (folder / "stage.json").is_file():
    cfg, params, meta = train(config, log, progress)
    save_stage(folder, params, kind="clip", config=cfg.to_dict(), extra=meta, overwrite=True)
  return load(folder, log)


def load(folder: str | Path, log: Callable[[str], None] = print) -> tuple[ClipScorer, dict]:
  """A CLIP stage checkpoint as the evaluator; its stage.json extras (if any) describe it."""
  from unclip_jax.checkpoint import read_stage
  from unclip_jax.models.clip_encoder import load_clip

  meta = read_stage(folder, kind="clip")
  cfg, params = load_clip(folder)
  keep = ("evaluator", "train_seconds", "self_check", "data")
  info = {"path": str(folder), **{k: meta[k] for k in keep if k in meta}}
  log(f"evaluator CLIP: {folder}" + (f" (self-check {meta['self_check']})" if "self_check" in meta else ""))
  return ClipScorer(cfg, params, "evaluator"), info
