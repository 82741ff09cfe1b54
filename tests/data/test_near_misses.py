"""Near-miss pictures (`unclip_jax.data.near_misses`): drawn from a scene's spec, each is wrong for the scene's
caption by the evaluation's own detector, and differs from the scene in the one way its kind says."""

from __future__ import annotations

import numpy as np
import pytest

from unclip_jax.data import hard_negatives, near_misses, shapes
from unclip_jax.eval import detector


def _scenes(size=64, n=120, **kw):
  return [shapes.ShapesScenes(image_size=size, seed=7, kinds=shapes.ALL_KINDS, **kw)[i] for i in range(n)]


@pytest.mark.parametrize("size,unnamed", [(32, 0.0), (64, 0.5)])
def test_a_spec_draws_its_scene_again_pixel_for_pixel(size, unnamed):
  for image, caption, spec in _scenes(size, 60, unnamed=unnamed):
    assert np.array_equal(shapes.render_spec(spec, size), image), caption


def test_each_kind_is_wrong_for_the_caption_by_the_detector():
  wrong = {k: [] for k in near_misses.KINDS}
  for i, (image, caption, spec) in enumerate(_scenes()):
    if not detector.check(detector.detect(image), caption)["pass"]:
      continue  # the few scenes the detector misreads (GenEval's relation rule) say nothing here
    for kind in near_misses.applicable(spec):
      miss, got = near_misses.near_miss(spec, 64, np.random.default_rng(i), (kind,))
      assert got == kind and miss.shape == image.shape and miss.dtype == np.uint8
      wrong[kind].append(not detector.check(detector.detect(miss), caption)["pass"])
      if kind == "place":  # the swapped places are the picture of the opposite relation
        flipped = hard_negatives.relation_flips(caption)[0]
        assert detector.check(detector.detect(miss), flipped)["relation_dataset"], flipped
  assert all(wrong["color"]) and all(wrong["count"]) and all(wrong["place"])
  assert min(len(wrong["count"]), len(wrong["place"])) >= 10
  # a blob the detector reads as the shape it replaced is still a near miss, but most are read as wrong
  assert np.mean(wrong["shape"]) >= 0.85, np.mean(wrong["shape"])


def test_a_colour_near_miss_recolours_one_object_off_the_palette_and_keeps_every_shape():
  image, caption, spec = next(s for s in _scenes() if s[2]["kind"] == "pair")
  miss, _ = near_misses.near_miss(spec, 64, np.random.default_rng(0), ("color",))
  background = np.all(image == shapes.BACKGROUND, -1)
  assert np.array_equal(np.all(miss == shapes.BACKGROUND, -1), background)  # same pixels covered
  changed = np.any(miss != image, -1)
  recoloured = {tuple(int(v) for v in c) for c in miss[changed]}
  assert len(recoloured) == 1, recoloured  # one object, one new colour
  (rgb,) = recoloured
  distances = [np.linalg.norm(np.subtract(rgb, shapes.object_rgb(o))) for o in spec["objects"]]
  assert near_misses.COLOR_SHIFT[0] <= min(distances) and min(distances) <= near_misses.COLOR_SHIFT[1] + 1


def test_which_kinds_a_scene_has_and_determinism():
  by_kind = {}
  for image, caption, spec in _scenes(32, 200, unnamed=0.5):
    by_kind.setdefault((spec["kind"], spec["objects"][0]["color"] is None), near_misses.applicable(spec))
  assert by_kind[("count", False)] == ("color", "shape", "count")
  assert by_kind[("count", True)] == ("shape", "count")  # an unnamed colour has no wrong shade
  assert by_kind[("single", False)] == ("color", "shape")
  assert by_kind[("relation", False)] == ("color", "shape", "place")
  _, _, spec = _scenes(32, 1)[0]
  a, b = (near_misses.near_miss(spec, 32, np.random.default_rng(3))[0] for _ in range(2))
  assert np.array_equal(a, b)
  assert near_misses.near_miss(spec, 32, np.random.default_rng(3), ())[0] is None


def test_unknown_kind_is_a_clear_error():
  assert near_misses.parse_kinds(" color, count ") == ("color", "count") and near_misses.parse_kinds("") == ()
  with pytest.raises(ValueError, match="unknown near-miss kind 'blur'; choose from color, shape, count, place"):
    near_misses.parse_kinds("color,blur")
