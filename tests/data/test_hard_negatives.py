"""Word-order hard negatives: each kind changes what the caption says and nothing else."""

from __future__ import annotations

import numpy as np
import pytest

from unclip_jax.data import hard_negatives as H
from unclip_jax.data import shapes


def test_each_kind_of_perturbation():
  assert H.relation_flips("a red circle left of a blue square") == ["a red circle right of a blue square"]
  assert H.relation_flips("a cat in front of a dog, above a mat") == ["a cat behind a dog, above a mat",
                                                                       "a cat in front of a dog, below a mat"]
  assert H.color_swaps("a red circle and a blue square") == ["a blue circle and a red square"]
  assert H.color_swaps("a red circle and a red square") == []  # the same colour twice: nothing to swap
  assert H.color_swaps("a blue square and a green square") == []  # swapped, it says the same
  assert H.count_changes("three blue squares") == ["two blue squares", "four blue squares", "five blue squares"]
  assert H.count_changes("a blue square") == []
  assert H.perturbations("a orange circle") == []
  # words are matched whole: "bluebell" and "redo" are not colours, "belowground" is no relation
  assert H.perturbations("a bluebell belowground, redo") == []
  both = H.perturbations("a red circle above a blue square", ("relation", "color"))
  assert both == ["a red circle below a blue square", "a blue circle above a red square"]
  assert H.perturbations("a red circle above a blue square", ("color",)) == both[1:]


def test_every_shapes_caption_with_structure_gets_a_negative():
  """In the shapes world every pair, count and relation caption has a negative, single objects have none,
  and a negative is never a caption of the same scene (it names another relation, binding or count)."""
  for kind in ("pair", "count", "relation"):
    for i in range(30):
      _, caption, spec = shapes.ShapesScenes(32, "train", 0, (kind,))[i]
      options = H.perturbations(caption)
      if kind == "pair" and (len({o["color"] for o in spec["objects"]}) == 1
                             or len({o["shape"] for o in spec["objects"]}) == 1):
        assert options == []  # one colour, or one shape: a colour swap says the same thing
        continue
      assert options and caption not in options, caption
  _, caption, _ = shapes.ShapesScenes(32, "train", 0, ("single",))[0]
  assert H.perturbations(caption) == []


def test_sampling_and_kinds():
  rng = np.random.default_rng(0)
  drawn = {H.sample_negative("three blue squares above a red circle", H.KINDS, rng) for _ in range(200)}
  assert drawn == set(H.perturbations("three blue squares above a red circle"))
  assert H.sample_negative("a red circle", H.KINDS, rng) is None
  assert H.parse_kinds(" relation, color ") == ("relation", "color") and H.parse_kinds("") == ()
  with pytest.raises(ValueError, match="unknown hard-negative kind 'order'"):
    H.parse_kinds("relation,order")
