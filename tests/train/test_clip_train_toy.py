"""A tiny CLIP trained for a few hundred steps on toy captioned scenes beats chance at zero-shot by far.

Data: single-object 32x32 scenes ("a red circle") from `unclip_jax.data.shapes`; training: optax adam on
8 CPU devices, `jax.pmap` of the per-device global-batch contrastive loss. Evaluation: zero-shot
classification of fresh scenes (another seed) with `unclip_jax.zeroshot.ZeroShotClassifier`.
"""

from __future__ import annotations

import time

import jax
import numpy as np
import optax
import pytest
from flax import jax_utils

from unclip_jax.data import shapes
from unclip_jax.models import clip as clip_model
from unclip_jax.models.tokenizer import Tokenizer
from unclip_jax.train import contrastive
from unclip_jax.zeroshot import ZeroShotClassifier

N_DEV, PER_DEVICE, STEPS, POOL, LR = 8, 8, 300, 2048, 2e-3


class CompactTokenizer:
  """The CLIP tokenizer with its ids renumbered 1..K over the toy grammar's words.

  A 49,408 x width embedding table (and its Adam state) on each of 8 virtual devices would dominate
  the step time; renumbering in increasing order keeps the end token the largest id (argmax pooling).
  """

  def __init__(self, context_length):
    self.base = Tokenizer(context_length)
    words = [f"a {c} {s}" for c in shapes.COLORS for s in shapes.SHAPES]
    words += [f"{n} {c} {s}s" for n in shapes.NUMBERS.values() for c in shapes.COLORS for s in shapes.SHAPES]
    used = np.unique(self.base(words + list(shapes.RELATIONS) + ["and"]))
    self.table = np.zeros(self.base.vocab_size, np.int32)
    self.table[used] = np.arange(len(used))  # used[0] is the padding id 0
    self.vocab_size = len(used)

  def __call__(self, texts, context_length=None):
    ids = self.base(texts, context_length)
    assert (self.table[ids] > 0).sum() == (ids > 0).sum(), "text outside the toy vocabulary"
    return self.table[ids]


TOKENIZER = CompactTokenizer(8)
CONFIG = clip_model.PRESETS["tiny"].replace(vision_layers=1, text_layers=1, context_length=8,
                                            vocab_size=TOKENIZER.vocab_size)


def _train(seed=0, steps=STEPS, lr=LR, per_device=PER_DEVICE):
  scenes = shapes.ShapesScenes(CONFIG.image_size, "train", seed=seed, kinds=("single",))
  images, captions, _ = scenes.batch(0, POOL)
  tokens = TOKENIZER(captions)
  x_all = np.asarray(clip_model.normalize_images(images, CONFIG))

  model = clip_model.CLIP(CONFIG)
  params = clip_model.init_params(CONFIG, jax.random.key(seed))
  tx = optax.adam(optax.warmup_cosine_decay_schedule(0.0, lr, 20, steps, lr / 10))

  def step(params, opt_state, x, t):
    def loss_fn(p):
      out = model.apply({"params": p}, x, t)
      return contrastive.clip_softmax_loss(out["image_embeds"], out["text_embeds"], out["logit_scale"], "batch")

    loss, grads = jax.value_and_grad(loss_fn)(params)
    grads = jax.lax.pmean(grads, "batch")
    updates, opt_state = tx.update(grads, opt_state, params)
    params = contrastive.clamp_logit_scale(optax.apply_updates(params, updates))
    return params, opt_state, loss

  pstep = jax.pmap(step, axis_name="batch", donate_argnums=(0, 1))
  p_params, p_opt = jax_utils.replicate(params), jax_utils.replicate(tx.init(params))
  rng = np.random.default_rng(seed)
  losses = []
  for _ in range(steps):
    idx = rng.choice(POOL, N_DEV * per_device, replace=False)
    x = x_all[idx].reshape(N_DEV, per_device, *x_all.shape[1:])
    t = tokens[idx].reshape(N_DEV, per_device, -1)
    p_params, p_opt, loss = pstep(p_params, p_opt, x, t)
    # Blocking every step: with several steps in flight, the 8 virtual CPU devices' collectives can
    # starve each other of the host's (2) threads and XLA aborts after a 40 s rendezvous timeout.
    losses.append(float(loss[0]))
  return jax.tree.map(lambda a: np.asarray(a[0]), p_params), losses


def _accuracy(classifier, images, truth):
  return float(np.mean(classifier.predict(images).argmax(-1) == np.asarray(truth)))


@pytest.mark.slow
def test_tiny_clip_learns_toy_zero_shot():
  start = time.perf_counter()
  params, losses = _train()
  train_s = time.perf_counter() - start
  assert np.mean(losses[-20:]) < 0.75 * np.mean(losses[:5]), (losses[:5], losses[-20:])

  eval_scenes = shapes.ShapesScenes(CONFIG.image_size, "train", seed=12345, kinds=("single",))
  images, _, specs = eval_scenes.batch(0, 512)
  objects = sorted({(c, s) for c in shapes.COLORS for s in shapes.SHAPES} - shapes.HELDOUT_OBJECTS)
  colors = list(shapes.COLORS)

  # colour x shape (18 combinations seen in training): chance 1/18
  pair_clf = ZeroShotClassifier(CONFIG, params, [f"{c} {s}" for c, s in objects], ["a {}"], TOKENIZER)
  pair_truth = [objects.index((s["objects"][0]["color"], s["objects"][0]["shape"])) for s in specs]
  pair_acc = _accuracy(pair_clf, images, pair_truth)
  # colour only (7 classes), prompt-ensembled over the three shapes: chance 1/7
  color_clf = ZeroShotClassifier(CONFIG, params, colors, [f"a {{}} {s}" for s in shapes.SHAPES], TOKENIZER)
  color_acc = _accuracy(color_clf, images, [colors.index(s["objects"][0]["color"]) for s in specs])
  # Not asserted, reported: the 3 (colour, shape) combinations never seen in training, among all 21.
  held = shapes.ShapesScenes(CONFIG.image_size, "heldout", seed=1, kinds=("single",))
  held_images, _, held_specs = held.batch(0, 256)
  every = [(c, s) for c in shapes.COLORS for s in shapes.SHAPES]
  held_clf = ZeroShotClassifier(CONFIG, params, [f"{c} {s}" for c, s in every], ["a {}"], TOKENIZER)
  held_acc = _accuracy(held_clf, held_images,
                       [every.index((s["objects"][0]["color"], s["objects"][0]["shape"])) for s in held_specs])
  print(f"\ntoy CLIP: held-out combinations among 21 classes: {held_acc:.3f} (chance {1 / 21:.3f})", end="")
  print(f"\ntoy CLIP: {STEPS} steps in {train_s:.1f}s, loss {np.mean(losses[:5]):.3f} -> "
        f"{np.mean(losses[-20:]):.3f}; zero-shot colour x shape {pair_acc:.3f} (chance {1 / len(objects):.3f}), "
        f"colour {color_acc:.3f} (chance {1 / len(colors):.3f})")
  assert pair_acc >= 3 / len(objects)
  assert color_acc >= 3 / len(colors)
