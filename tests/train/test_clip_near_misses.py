"""CLIP with near-miss pictures (`train.near_misses`): the batch carries each scene's near miss, a run with them
adds a trained loss term and resumes exactly, and bad settings are one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.helpers import assert_same_run, tiny_clip_config
from unclip_jax.data import near_misses, pipeline, shapes
from unclip_jax.errors import UserError
from unclip_jax.train import loop
from unclip_jax.train.metrics import read_metrics
from unclip_jax.train.stages import get_stage

KW = {"train.near_misses": "color,shape,count,place"}


def test_the_transform_adds_the_scenes_near_miss_drawn_with_the_records_stream():
  stage = get_stage(tiny_clip_config(("unused", "unused"), **KW))
  transform = stage.operations()[-1]
  image, caption, spec = shapes.ShapesScenes(32, "train", 0, ("count",))[0]
  example = pipeline.ImageCaption().map({"image": image, "caption": caption.encode(), "spec": json.dumps(spec)})
  out = transform.random_map(dict(example), np.random.default_rng(5))
  expected, _ = near_misses.near_miss(spec, 32, np.random.default_rng(5), near_misses.KINDS)
  assert bool(out["has_near_miss"]) and out["near_miss"].dtype == np.float32
  np.testing.assert_allclose(out["near_miss"], expected / 127.5 - 1.0, atol=1e-6)
  assert not np.array_equal(out["near_miss"], out["image"])
  # A scene with none of the asked kinds (a single object has no count) gets the flag off and a blank image.
  single = shapes.ShapesScenes(32, "train", 0, ("single",))[0]
  only_count = get_stage(tiny_clip_config(("unused", "unused"), **{"train.near_misses": "count"})).operations()[-1]
  none = only_count.random_map(pipeline.ImageCaption().map(
      {"image": single[0], "caption": single[1], "spec": json.dumps(single[2])}), np.random.default_rng(0))
  assert not bool(none["has_near_miss"]) and not np.any(none["near_miss"])
  assert {"near_miss", "has_near_miss"} <= set(stage.batch_spec(4))


@pytest.mark.slow
def test_a_run_with_near_misses_trains_and_resumes_exactly(data_dir, tmp_path):
  config = lambda **kw: tiny_clip_config(data_dir, **KW, **kw)  # noqa: E731
  straight = loop.train(config(), tmp_path / "straight", progress=False)
  rows = read_metrics(tmp_path / "straight")
  assert all(0.0 <= r["near_miss_accuracy"] <= 1.0 and r["near_miss_loss"] > 0 for r in rows)
  assert all(r["loss"] > r["near_miss_loss"] for r in rows)  # the contrastive loss plus the near-miss term
  loop.train(config(), tmp_path / "run", stop_after=4, progress=False)
  resumed = loop.train(config(), tmp_path / "run", progress=False)
  assert resumed.start_step == 4
  assert_same_run(tmp_path / "straight", straight.state, tmp_path / "run", resumed.state)
  # With word-order negatives and mirrors too, every term is logged; a workdir of one is refused to the other.
  both = config(**{"train.hard_negatives": "relation", "train.image_hard_negatives": True, "train.steps": 2})
  loop.train(both, tmp_path / "both", progress=False)
  assert {"near_miss_loss", "flip_loss", "negative_accuracy"} <= set(read_metrics(tmp_path / "both")[-1])
  with pytest.raises(UserError, match="train.near_misses"):
    loop.train(tiny_clip_config(data_dir, **{"train.steps": 8}), tmp_path / "run", progress=False)


def test_bad_settings_are_one_error():
  with pytest.raises(UserError, match="--config.train.near_misses: unknown near-miss kind 'blur'"):
    get_stage(tiny_clip_config(("unused", "unused"), **{"train.near_misses": "color,blur"}))
  with pytest.raises(UserError, match="near_misses needs the shapes data"):
    get_stage(tiny_clip_config(("unused", "unused"), **KW, **{"data.name": "image_text"}))
