"""The negation option of the shapes data (off by default), the evaluation prompt sets, and the evaluator
network's targets."""

from __future__ import annotations

import json

import numpy as np

from unclip_jax.data import shapes
from unclip_jax.eval import features, prompts


def test_negation_kind_draws_the_named_object_alone():
  for split in shapes.SPLITS:
    scenes = shapes.ShapesScenes(64, split, seed=5, kinds=(shapes.NEGATION,))
    for i in range(40):
      image, caption, spec = scenes[i]
      parsed = shapes.parse_caption(caption)
      assert parsed["kind"] == shapes.NEGATION and caption == shapes.caption_for(spec)
      assert parsed["negated"] == spec["negated"] != spec["objects"][0]["shape"]
      (obj,) = spec["objects"]
      assert parsed["objects"] == [(obj["color"], obj["shape"])]
      assert shapes.is_heldout(spec) == (split == "heldout")
  # off by default: the default kinds never negate, and ALL_KINDS mixes negations in
  assert shapes.NEGATION not in shapes.KINDS
  default = shapes.ShapesScenes(32, seed=1)
  assert not any(" no " in default[i][1] for i in range(200))
  every = shapes.ShapesScenes(32, seed=1, kinds=shapes.ALL_KINDS)
  assert {every[i][2]["kind"] for i in range(200)} == set(shapes.ALL_KINDS)


def test_negation_builder_config(tmp_path):
  from unclip_jax.data import builders
  from unclip_jax.data.pipeline import open_source

  assert {c.name: c.kinds for c in builders.Shapes.BUILDER_CONFIGS}["64"] == shapes.KINDS
  assert {c.name: c.kinds for c in builders.Shapes.BUILDER_CONFIGS}["64_negation"] == shapes.ALL_KINDS
  config = builders.ShapesConfig(name="32_negation_test", image_size=32, train_size=30, heldout_size=6,
                                 kinds=shapes.ALL_KINDS)
  builders.Shapes(config=config, data_dir=str(tmp_path), file_format=builders.FILE_FORMAT).download_and_prepare()
  source = open_source(tmp_path, "shapes", "train", "32_negation_test")
  captions = [source[i]["caption"].decode() for i in range(len(source))]
  specs = [json.loads(source[i]["spec"]) for i in range(len(source))]
  assert len(captions) == 30 and any(s["kind"] == shapes.NEGATION for s in specs)
  want = shapes.ShapesScenes(32, "train", 0, shapes.ALL_KINDS)
  assert sorted(captions) == sorted(want[i][1] for i in range(30))  # tfds orders records by key hash


def test_prepare_cli_negation_flag_builds_the_negation_config(tmp_path):
  from unclip_jax.data import prepare

  plain = prepare.prepare_shapes(str(tmp_path), 32, 12, 4, seed=3)
  negated = prepare.prepare_shapes(str(tmp_path), 32, 12, 4, seed=3, negation=True)
  assert plain.builder_config.name == "32_n12_h4_s3" and plain.builder_config.kinds == shapes.KINDS
  assert negated.builder_config.name == "32_n12_h4_s3_negation"
  assert negated.builder_config.kinds == shapes.ALL_KINDS
  assert prepare.shapes_config(64, 50_000, 2_000, 0, negation=True) == "64_negation"


def test_prompt_sets():
  for task, kind in prompts.TASKS.items():
    seen, _, seen_specs = prompts.task_set(task, "seen", 20, seed=1)
    held, images, held_specs = prompts.task_set(task, "heldout", 20, seed=1)
    assert images.shape == (20, 64, 64, 3)
    assert all(s["kind"] == kind for s in seen_specs + held_specs)
    assert not any(shapes.is_heldout(s) for s in seen_specs) and all(shapes.is_heldout(s) for s in held_specs)
    assert prompts.task_set(task, "seen", 20, seed=1)[0] == seen  # deterministic
    assert prompts.task_set(task, "seen", 20, seed=2)[0] != seen  # the seed matters
  a, b = prompts.image_seeds("x", 10, 0), prompts.image_seeds("y", 10, 0)
  assert len(set(a) | set(b)) == 20 and all(0 <= s < 2 ** 32 for s in a + b)
  captions, images, specs, tasks, splits = prompts.balanced_set(23, seed=0)
  assert len(captions) == 23 and set(tasks) == set(prompts.TASKS) and set(splits) == set(prompts.SPLITS)


def test_evaluator_network_targets_count_every_object():
  images, cells = features.scenes(300, 64, seed=9)
  specs = (shapes.ShapesScenes(64, "train", 9, shapes.ALL_KINDS).batch(0, 240)[2]
           + shapes.ShapesScenes(64, "heldout", 9, shapes.ALL_KINDS).batch(0, 60)[2])
  counts = features.counts_from_cells(cells)
  for spec, row in zip(specs, counts):  # no two object centres share a cell, so the counts are exact
    want = np.zeros(len(features.OBJECTS), np.int32)
    for o in spec["objects"]:
      want[features.OBJECTS.index((o["color"], o["shape"]))] += 1
    assert np.array_equal(row, want)
