"""The zeroshot suite probes a CLIP on scenes rendered at its own input size, and reports 64 px renders
resized down to it separately."""

from __future__ import annotations

import types

import numpy as np

from unclip_jax.data import shapes
from unclip_jax.eval import detector, prompts, zeroshot_probe


class _Scorer:
  """Records the image sizes it is shown; predicts class 0 for everything."""

  def __init__(self, size):
    self.config = types.SimpleNamespace(image_size=size)
    self.sizes = []

  def zero_shot(self, images, labels, templates):
    self.sizes.append(images.shape[1:3])
    return np.zeros(len(images), int)

  def encode_images(self, images):
    self.sizes.append(images.shape[1:3])
    return np.zeros((len(images), 4))

  def encode_captions(self, captions):
    return np.zeros((len(captions), 4))


class _SceneEncoder:
  """A stand-in CLIP image tower that sees each single-object scene's (colour, shape) through the detector:
  `factorized` codes them as one-hot colour ⊕ one-hot shape, otherwise as one one-hot per (colour, shape)
  pair (an embedding in which an unseen pair shares nothing with the seen ones)."""

  PAIRS = [(c, s) for c in shapes.COLORS for s in shapes.SHAPES]

  def __init__(self, factorized: bool):
    self.config = types.SimpleNamespace(image_size=prompts.IMAGE_SIZE)
    self.factorized = factorized

  def encode_images(self, images):
    rows = []
    for image in images:
      (obj,) = detector.detect(image).objects
      if self.factorized:
        rows.append(np.r_[np.eye(len(shapes.COLORS))[list(shapes.COLORS).index(obj.color)],
                          np.eye(len(shapes.SHAPES))[shapes.SHAPES.index(obj.shape)]])
      else:
        rows.append(np.eye(len(self.PAIRS))[self.PAIRS.index((obj.color, obj.shape))])
    return np.stack(rows)


def test_linear_probes_read_unseen_pairs_only_from_a_factorized_embedding():
  good = zeroshot_probe.linear_probe_transfer(_SceneEncoder(factorized=True), 30, 0)
  assert good["fit_pairs"] == 18 and good["fit_scenes"] == 18 * zeroshot_probe.PROBE_FIT_PER_OBJECT
  for attribute in ("colour", "shape"):
    assert good[attribute]["seen"]["rate"] == good[attribute]["heldout"]["rate"] == 1.0
    assert good[attribute]["heldout"]["n"] == 30
  bad = zeroshot_probe.linear_probe_transfer(_SceneEncoder(factorized=False), 30, 0)
  for attribute in ("colour", "shape"):  # seen pairs are read; an unseen pair's own dimension was never fit
    assert bad[attribute]["seen"]["rate"] == 1.0 and bad[attribute]["heldout"]["rate"] <= 0.5


def test_probes_render_at_the_clip_size_and_report_the_resized_renders_apart():
  scorer = _Scorer(32)
  ctx = types.SimpleNamespace(generator_clip=scorer, log=print,
                              options=types.SimpleNamespace(num=4, seed=0, zeroshot_extra=False))
  out = zeroshot_probe.run(ctx)
  assert out["image_size"] == 32 and set(scorer.sizes) == {(32, 32), (prompts.IMAGE_SIZE, prompts.IMAGE_SIZE)}
  for key in ("shapes", "shapes_resized_from_64px"):
    assert out[key]["heldout"]["shape"]["n"] == 4
  assert out["linear_probe"]["shape"]["heldout"]["n"] == 4
  assert out["word_order"]["position"]["heldout"]["n"] == 4 and out["word_order"]["binding"]["perturbation"] == "color"
  native = prompts.task_set("single", "heldout", 4, 77, 32)
  big = prompts.task_set("single", "heldout", 4, 77)
  assert native[0] == big[0] and native[1].shape[1:3] == (32, 32) and big[1].shape[1:3] == (64, 64)

  scorer64 = _Scorer(prompts.IMAGE_SIZE)  # a 64 px CLIP: one probe, no resized copy
  out = zeroshot_probe.run(types.SimpleNamespace(generator_clip=scorer64, log=print, options=ctx.options))
  assert "shapes_resized_from_64px" not in out and set(scorer64.sizes) == {(64, 64)}


class _CaptionScorer:
  """A stand-in CLIP that knows each probed scene's caption: images embed as their caption's text
  embedding, and text embeds either as a one-hot per distinct caption (it reads word order) or as word
  counts (a bag of words)."""

  def __init__(self, bag_of_words: bool, seed: int):
    self.config = types.SimpleNamespace(image_size=32)
    self.bag, self.seed, self.vocab = bag_of_words, seed, {}
    self.by_image = {}
    for task in zeroshot_probe.WORD_ORDER:
      for split in prompts.SPLITS:
        captions, images, _ = prompts.task_set(task, split, 40, seed + 91, 32)
        self.by_image.update({im.tobytes(): c for im, c in zip(images, captions)})

  def _id(self, key):
    return self.vocab.setdefault(key, len(self.vocab))

  def encode_captions(self, captions):
    keys = [c.split() if self.bag else [c] for c in captions]
    ids = [[self._id(k) for k in ks] for ks in keys]
    out = np.zeros((len(captions), 512))
    for row, ks in zip(out, ids):
      np.add.at(row, ks, 1.0)
    return out

  def encode_images(self, images):
    return self.encode_captions([self.by_image[im.tobytes()] for im in images])


def test_word_order_probe_tells_a_reader_of_word_order_from_a_bag_of_words():
  reader = zeroshot_probe.word_order_probe(_CaptionScorer(False, 0), 20, 0)
  bag = zeroshot_probe.word_order_probe(_CaptionScorer(True, 0), 20, 0)
  for task in ("position", "binding", "counting"):
    for split in prompts.SPLITS:
      assert reader[task][split]["rate"] == 1.0 and reader[task][split]["n"] == 20
      assert 0 < reader[task][split]["chance"] <= 0.5
  # Word counts still see a changed word ("above" → "below", "two" → "three"), but swapped colours are
  # the same bag: a tie, which the probe counts as a miss.
  assert bag["binding"]["seen"]["rate"] == bag["binding"]["heldout"]["rate"] == 0.0
  assert bag["position"]["seen"]["rate"] == 1.0
