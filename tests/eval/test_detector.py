"""The rule-based shapes detector: right on ground-truth renders, near chance on shuffled captions,
and strict (noise and clutter pass nothing)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from unclip_jax.data import shapes
from unclip_jax.eval import detector

N = 50  # scenes per (kind, split)


def _oracle(spec: dict, caption: str) -> bool:
  """Whether `caption` is true of the scene `spec` describes, by the evaluation's rules."""
  parsed = shapes.parse_caption(caption)
  objects = sorted((o["color"], o["shape"]) for o in spec["objects"])
  if objects != sorted(parsed["objects"]):
    return False
  if parsed["relation"] is None:
    return True
  boxes = {(o["color"], o["shape"]): o["bbox"] for o in spec["objects"]}
  a, b = (boxes[o] for o in parsed["objects"])
  ex = lambda r: (r[0], r[1], r[2] + 1, r[3] + 1)  # noqa: E731
  return parsed["relation"] in detector.relative_position(ex(a), ex(b))


@pytest.fixture(scope="module")
def renders():
  """{(kind, split): (images, captions, specs, detections)} of ground-truth renders at 64 px."""
  out = {}
  for kind in shapes.ALL_KINDS:
    for split in shapes.SPLITS:
      images, captions, specs = shapes.ShapesScenes(64, split, seed=21, kinds=(kind,)).batch(0, N)
      out[kind, split] = images, captions, specs, [detector.detect(im) for im in images]
  return out


def test_ground_truth_renders_pass(renders):
  for (kind, split), (_, captions, specs, scenes) in renders.items():
    checks = [detector.check(scene, cap) for scene, cap in zip(scenes, captions)]
    objects = np.mean([c["objects"] for c in checks])
    assert objects >= 0.99, (kind, split, objects, [c["reason"] for c in checks if not c["objects"]][:3])
    agree = np.mean([c["pass"] == _oracle(s, cap) for c, s, cap in zip(checks, specs, captions)])
    assert agree >= 0.99, (kind, split, agree)
    if kind == "relation":
      # the builder's own relation (boxes apart along the axis) holds for all of them; GenEval's rule
      # on box centres only for most (reported as the position task's real-image ceiling)
      assert np.mean([c["relation_dataset"] for c in checks]) >= 0.99
      assert 0.6 < np.mean([c["pass"] for c in checks]) < 0.95
    else:
      assert np.mean([c["pass"] for c in checks]) >= 0.99, (kind, split)
    if kind == shapes.NEGATION:
      assert not any(c["negated_present"] for c in checks)


def test_shuffled_captions_are_near_chance(renders):
  rng = np.random.default_rng(0)
  for (kind, split), (_, captions, specs, scenes) in renders.items():
    perm = rng.permutation(N)
    shuffled = [captions[j] for j in perm]
    rate = np.mean([detector.check(scene, cap)["pass"] for scene, cap in zip(scenes, shuffled)])
    chance = np.mean([_oracle(s, cap) for s, cap in zip(specs, shuffled)])  # the shuffled caption happens to be true
    assert abs(rate - chance) <= 0.02, (kind, split, rate, chance)
    # held-out singles (and negations) have only 3 distinct objects, so a shuffled caption is right ~1/3 of the time
    assert rate <= (0.6 if split == "heldout" and kind in ("single", shapes.NEGATION) else 0.15), (kind, split, rate)


def test_noise_and_clutter_pass_nothing(renders):
  rng = np.random.default_rng(0)
  captions = [c for (_, _), (_, caps, _, _) in renders.items() for c in caps[:4]]
  noise = rng.integers(0, 256, (len(captions), 64, 64, 3), dtype=np.uint8)
  assert not any(c["pass"] for c in detector.check_images(noise, captions))
  # smooth noise (blobs of random colour) and ground-truth scenes with many extra small shapes
  smooth = np.stack([np.asarray(Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize(
      (64, 64), Image.Resampling.BICUBIC)) for _ in captions])
  assert not any(c["pass"] for c in detector.check_images(smooth, captions))
  images, caps, _, _ = renders["pair", "train"]
  cluttered = []
  for image in images:
    im = Image.fromarray(image)
    draw = ImageDraw.Draw(im)
    for _ in range(12):
      x, y = (int(v) for v in rng.integers(0, 60, 2))
      draw.rectangle((x, y, x + 3, y + 3), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    cluttered.append(np.asarray(im))
  assert np.mean([c["pass"] for c in detector.check_images(np.stack(cluttered), caps)]) <= 0.05
  # an empty background passes nothing either
  empty = np.broadcast_to(np.array(shapes.BACKGROUND, np.uint8), (len(captions), 64, 64, 3))
  assert not any(c["pass"] for c in detector.check_images(empty, captions))


def test_relative_position_rule():
  # GenEval's rule: mostly-horizontal offsets are left/right, mostly-vertical above/below, diagonal both
  assert detector.relative_position((0, 0, 10, 10), (30, 0, 40, 10)) == {"left of"}
  assert detector.relative_position((30, 0, 40, 10), (0, 2, 10, 12)) == {"right of"}
  assert detector.relative_position((0, 0, 10, 10), (0, 30, 10, 40)) == {"above"}
  assert detector.relative_position((0, 0, 10, 10), (30, 30, 40, 40)) == {"left of", "above"}
  assert detector.relative_position((0, 0, 10, 10), (1, 1, 11, 11)) == set()  # overlapping: no relation


def test_check_reports_why():
  image, caption, spec = shapes.ShapesScenes(64, "train", seed=3, kinds=("pair",))[0]
  ok = detector.check(detector.detect(image), caption)
  assert ok["pass"] and ok["reason"] == ""
  a, b = spec["objects"]
  wrong = f"a {b['color']} {a['shape']} and a {a['color']} {b['shape']}"  # colours swapped between the shapes
  swapped = sorted([(b["color"], a["shape"]), (a["color"], b["shape"])])
  if swapped != sorted([(a["color"], a["shape"]), (b["color"], b["shape"])]):
    bad = detector.check(detector.detect(image), wrong)
    assert not bad["pass"] and "objects" in bad["reason"]
