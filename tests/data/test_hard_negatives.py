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


def test_negatives_no_train_image_fits_can_be_excluded():
  """A relation flip or colour swap of a train caption can name a held-out combination; with the shapes
  split's `caption_is_heldout` as `exclude` those are never drawn, and the others still are."""
  held = "a red triangle below a blue circle"  # its flip says "triangle above circle", a held-out triple
  assert H.perturbations(held, ("relation",)) == ["a red triangle above a blue circle"]
  assert shapes.caption_is_heldout("a red triangle above a blue circle") and not shapes.caption_is_heldout(held)
  rng = np.random.default_rng(0)
  assert H.sample_negative(held, ("relation",), rng, exclude=shapes.caption_is_heldout) is None
  drawn = {H.sample_negative(held, H.KINDS, rng, exclude=shapes.caption_is_heldout) for _ in range(50)}
  assert drawn == {"a blue triangle below a red circle"}
  swap = "a orange square and a red circle"  # its colour swap names the held-out orange circle
  assert shapes.caption_is_heldout(H.perturbations(swap, ("color",))[0])
  assert H.sample_negative(swap, ("color",), rng, exclude=shapes.caption_is_heldout) is None
  # every train caption's drawn negative names only combinations the train split shows
  scenes = shapes.ShapesScenes(32, "train", 0, ("pair", "relation"))
  for i in range(200):
    negative = H.sample_negative(scenes[i][1], H.KINDS, rng, exclude=shapes.caption_is_heldout)
    assert negative is None or not shapes.caption_is_heldout(negative)
  assert not shapes.caption_is_heldout("a corgi")  # outside the grammar: nothing to exclude
