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


class _PlacementEncoder:
  """A stand-in CLIP image tower that sees a scene's objects through the detector. It codes the objects'
  colours and shapes, and with `places` also where they are: the first object's (by colour, shape) centre
  and quadrant, and on which side of the second it lies, across and down."""

  def __init__(self, places: bool):
    self.config = types.SimpleNamespace(image_size=prompts.IMAGE_SIZE)
    self.places = places

  def encode_images(self, images):
    rows = []
    for image in images:
      objs = sorted(detector.detect(image).objects, key=lambda o: (o.color, str(o.shape)))
      what = np.zeros(len(shapes.COLORS) * len(shapes.SHAPES))
      for o in objs:
        what[list(shapes.COLORS).index(o.color) * len(shapes.SHAPES) + shapes.SHAPES.index(o.shape)] = 1
      row = [what]
      if self.places:
        size = prompts.IMAGE_SIZE
        ax, ay = np.add(objs[0].bbox[:2], objs[0].bbox[2:]) / 2
        row.append([ax / size, ay / size])
        row.append(np.eye(4)[int(ax >= size / 2) + 2 * int(ay >= size / 2)])
        side = np.zeros(2)
        if len(objs) == 2:
          side = (np.add(objs[1].bbox[:2], objs[1].bbox[2:]) / 2 > (ax, ay)).astype(float)
        row.append(side)
      rows.append(np.concatenate(row))
    return np.stack(rows)


def test_placement_probe_reads_where_objects_are_only_from_an_embedding_that_codes_it():
  places = zeroshot_probe.placement_probe(_PlacementEncoder(True), 30, 0)
  blind = zeroshot_probe.placement_probe(_PlacementEncoder(False), 30, 0)
  for split in prompts.SPLITS:
    assert places["single_quadrant"][split]["n"] == places["position_side"][split]["n"] == 30
    assert places["single_quadrant"][split]["rate"] >= 0.9 and min(places["single_quadrant"]["centre_r2"][split]) > 0.9
    assert places["position_side"][split]["rate"] >= 0.9
    # Colours and shapes alone: the quadrant, the centre and the side are guesses.
    assert blind["single_quadrant"][split]["rate"] <= 0.5 and max(blind["single_quadrant"]["centre_r2"][split]) < 0.3
    assert blind["position_side"][split]["rate"] <= 0.7
  assert places["position_side"]["chance"] == 0.5


def test_canonical_side_is_the_same_for_both_wordings_of_one_picture():
  spec = {"objects": [{"color": "red", "shape": "circle"}, {"color": "blue", "shape": "square"}],
          "relation": {"relation": "above", "subject": 0, "object": 1}}
  other = {"objects": spec["objects"], "relation": {"relation": "below", "subject": 1, "object": 0}}
  # (blue, square) sorts first: the blue square lies below the red circle in both wordings.
  assert zeroshot_probe.canonical_side(spec) == zeroshot_probe.canonical_side(other) == \
      zeroshot_probe.RELATION_SIDES.index("below")
