"""CLIP with word-order hard negatives (`train.hard_negatives`): the batch carries them, a run with them
resumes exactly (the negatives come from each record's own random stream), and bad settings are errors."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import assert_same_run, tiny_clip_config
from unclip_jax.data import hard_negatives
from unclip_jax.errors import UserError
from unclip_jax.models.tokenizer import Tokenizer
from unclip_jax.train import loop
from unclip_jax.train.metrics import read_metrics
from unclip_jax.train.stages import get_stage

KINDS = "relation,color,count"


def test_the_transform_adds_a_negative_caption_where_there_is_one():
  config = tiny_clip_config(("unused", "unused"), **{"train.hard_negatives": KINDS})
  stage = get_stage(config)
  transform = stage.operations()[-1]
  tokenizer = Tokenizer(stage.model_config.context_length)
  caption = "a red circle above a blue square"
  out = transform.random_map({"caption": caption}, np.random.default_rng(0))
  assert bool(out["has_negative"])
  negative = [c for c in hard_negatives.perturbations(caption) if np.array_equal(tokenizer([c])[0], out["negative_tokens"])]
  assert len(negative) == 1  # the tokens are those of one of the caption's perturbations
  none = transform.random_map({"caption": "a red circle"}, np.random.default_rng(0))
  assert not bool(none["has_negative"]) and np.array_equal(none["negative_tokens"], tokenizer([""])[0])
  assert set(stage.batch_spec(4)) == {"image", "tokens", "negative_tokens", "has_negative"}
  # on shapes data a negative naming a held-out combination is never drawn (no train image fits it)
  flipped_to_heldout = transform.random_map({"caption": "a red triangle below a blue circle"}, np.random.default_rng(0))
  assert np.array_equal(flipped_to_heldout["negative_tokens"], tokenizer(["a blue triangle below a red circle"])[0])
  plain = get_stage(tiny_clip_config(("unused", "unused")))
  assert set(plain.batch_spec(4)) == {"image", "tokens"} and len(plain.operations()) == len(stage.operations()) - 1


@pytest.mark.slow
def test_a_run_with_hard_negatives_trains_and_resumes_exactly(data_dir, tmp_path):
  config = lambda: tiny_clip_config(data_dir, **{"train.hard_negatives": KINDS})  # noqa: E731
  straight = loop.train(config(), tmp_path / "straight", progress=False)
  rows = read_metrics(tmp_path / "straight")
  assert all(0.0 <= r["negative_accuracy"] <= 1.0 for r in rows) and all(np.isfinite(r["loss"]) for r in rows)
  loop.train(config(), tmp_path / "run", stop_after=4, progress=False)
  resumed = loop.train(config(), tmp_path / "run", progress=False)
  assert resumed.start_step == 4
  assert_same_run(tmp_path / "straight", straight.state, tmp_path / "run", resumed.state)
  # The negatives change the loss: the same run without them follows another curve.
  loop.train(tiny_clip_config(data_dir), tmp_path / "plain", progress=False)
  assert [r["loss"] for r in read_metrics(tmp_path / "plain")] != [r["loss"] for r in rows]
  # ... and a workdir of one is refused to the other (an identity field).
  with pytest.raises(UserError, match="train.hard_negatives"):
    loop.train(tiny_clip_config(data_dir, **{"train.steps": 8}), tmp_path / "run", progress=False)


def test_an_unknown_kind_is_one_error():
  with pytest.raises(UserError, match="--config.train.hard_negatives: unknown hard-negative kind 'order'"):
    get_stage(tiny_clip_config(("unused", "unused"), **{"train.hard_negatives": "relation,order"}))


def test_a_flipped_relation_has_its_mirror_image_and_nothing_else_has_one():
  assert hard_negatives.flip_axis("a red circle left of a blue square", "a red circle right of a blue square") == \
      hard_negatives.FLIP_LEFT_RIGHT
  assert hard_negatives.flip_axis("a red circle above a blue square", "a red circle below a blue square") == \
      hard_negatives.FLIP_UP_DOWN
  assert hard_negatives.flip_axis("a cup in front of a box", "a cup behind a box") == hard_negatives.NO_FLIP
  # A colour swap or a count change is no mirror; neither is a caption without a negative.
  assert hard_negatives.flip_axis("a red circle left of a blue square", "a blue circle left of a red square") == \
      hard_negatives.NO_FLIP
  assert hard_negatives.flip_axis("two red circles", "three red circles") == hard_negatives.NO_FLIP
  assert hard_negatives.flip_axis("a red circle left of a blue square", None) == hard_negatives.NO_FLIP


def test_the_mirror_swaps_the_objects_sides_along_the_relations_axis_only():
  from unclip_jax.data import shapes
  from unclip_jax.eval import detector
  from unclip_jax.train.stages.clip import mirrored

  scenes = shapes.ShapesScenes(64, "train", 3, ("relation",))
  images, captions, specs = scenes.batch(0, 12)
  flips = np.array([hard_negatives.flip_axis(c, hard_negatives.relation_flips(c)[0]) for c in captions])
  assert set(flips) == {hard_negatives.FLIP_LEFT_RIGHT, hard_negatives.FLIP_UP_DOWN}
  out = np.asarray(mirrored(images.astype(np.float32), flips)).astype(np.uint8)
  for image, caption, flip in zip(out, captions, flips):
    flipped = hard_negatives.relation_flips(caption)[0]
    if flip == hard_negatives.FLIP_LEFT_RIGHT:  # left-right mirrors keep every shape; the detector reads them
      result = detector.check(detector.detect(image), flipped)  # the builder's rule: apart along the axis
      assert result["objects"] and result["relation_dataset"], (flipped, result["reason"])
      assert not detector.check(detector.detect(image), caption)["relation_dataset"]
  unchanged = np.asarray(mirrored(images.astype(np.float32), np.zeros(len(images), np.int32)))
  assert np.array_equal(unchanged, images.astype(np.float32))


@pytest.mark.slow
def test_image_hard_negatives_add_the_mirror_flag_and_a_trained_loss_term(data_dir, tmp_path):
  kw = {"train.hard_negatives": "relation", "train.image_hard_negatives": True}
  stage = get_stage(tiny_clip_config(("unused", "unused"), **kw))
  transform = stage.operations()[-1]
  out = transform.random_map({"caption": "a red circle left of a blue square"}, np.random.default_rng(0))
  assert int(out["negative_flip"]) == hard_negatives.FLIP_LEFT_RIGHT
  assert int(transform.random_map({"caption": "a red circle"}, np.random.default_rng(0))["negative_flip"]) == 0
  assert "negative_flip" in stage.batch_spec(4)
  loop.train(tiny_clip_config(data_dir, **kw), tmp_path / "flips", progress=False)
  rows = read_metrics(tmp_path / "flips")
  assert all(0.0 <= r["flip_accuracy"] <= 1.0 and np.isfinite(r["flip_loss"]) and r["flip_loss"] > 0 for r in rows)
  # A workdir trained without them is another run.
  loop.train(tiny_clip_config(data_dir, **{"train.hard_negatives": "relation", "train.steps": 4}), tmp_path / "text",
             progress=False)
  with pytest.raises(UserError, match="train.image_hard_negatives"):
    loop.train(tiny_clip_config(data_dir, **kw), tmp_path / "text", progress=False)
  with pytest.raises(UserError, match="needs 'relation'"):
    get_stage(tiny_clip_config(("unused", "unused"), **{"train.hard_negatives": "color",
                                                         "train.image_hard_negatives": True}))
