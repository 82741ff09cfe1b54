"""Near-miss pictures: a `shapes` scene drawn again from its spec with one thing wrong, a wrong image for its caption.

Why: the demo decoder's wrong candidates are mostly near misses: a circle drawn as a blob, a purple a shade too
red, one triangle too many (docs/demo.md, "the candidates suite"). A CLIP trained on random batches never has to
tell a right picture from an almost-right one (a batch's other images differ in everything), so as a reranker it
keeps a right candidate little more often than a random pick does. Training it to prefer each scene to its near
miss (`train.near_misses` of the CLIP stage) asks exactly that. The near misses are drawn by the scene renderer
from the training scene's own spec, never taken from the decoder's drawings or graded by the evaluation's
detector, so a rater trained on them is not fitted to the pipeline's mistakes or to its grader.

Kinds (a scene gets one near miss, of a kind drawn uniformly from those that apply to it):
  color   one object in an off-palette shade: its colour moved `COLOR_SHIFT` RGB units in a random direction
          (beyond the 40 the evaluation's detector accepts); objects with unnamed colours have none
  shape   one object drawn as another palette shape, or as an irregular blob in its box
  count   a count scene ("three blue squares") with one object fewer, or one more where it fits
  place   a relation scene ("a red circle left of a blue square") with the two objects' places swapped, so the
          relation is the opposite one (the word-order image negative without the caption twin and the mirror)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from unclip_jax.data import hard_negatives, shapes

KINDS = ("color", "shape", "count", "place")
COLOR_SHIFT = (48.0, 96.0)  # RGB distance from the palette colour, uniform in this range
MIN_CONTRAST = shapes.UNNAMED_MIN_CONTRAST  # a recoloured object stays visible on the background
BLOB_VERTICES = (5, 8)
BLOB_RADIUS = (0.45, 1.0)  # of the box's half-side, per vertex: a lumpy polygon, not a disc


def parse_kinds(value: str) -> tuple[str, ...]:
  """'color,shape' → ('color', 'shape'); '' → (); a ValueError names an unknown kind."""
  return hard_negatives.parse_kinds(value, KINDS, "near-miss")


def applicable(spec: dict[str, Any], kinds=KINDS) -> tuple[str, ...]:
  """The kinds of near miss `spec`'s scene has."""
  named = any(o["color"] is not None for o in spec["objects"])
  has = {"color": named, "shape": bool(spec["objects"]), "count": spec["kind"] == "count",
         "place": bool(spec.get("relation"))}
  return tuple(k for k in kinds if has[k])


def shifted_color(rgb, rng: np.random.Generator) -> tuple[int, int, int]:
  """`rgb` moved `COLOR_SHIFT` units in a random direction, inside the cube and visible on the background."""
  base = np.asarray(rgb, np.float64)
  for _ in range(100):
    direction = rng.normal(size=3)
    moved = np.clip(np.rint(base + direction / np.linalg.norm(direction) * rng.uniform(*COLOR_SHIFT)), 0, 255)
    if (np.linalg.norm(moved - base) >= COLOR_SHIFT[0]
        and np.linalg.norm(moved - np.asarray(shapes.BACKGROUND)) >= MIN_CONTRAST):
      return tuple(int(v) for v in moved)
  raise RuntimeError(f"no visible off-palette shade of {tuple(rgb)}")  # pragma: no cover


def blob(box, rng: np.random.Generator) -> list[tuple[float, float]]:
  """An irregular polygon inside `box` (inclusive bounds): vertices at jittered angles and random radii."""
  x0, y0, x1, y1 = box
  cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
  n = int(rng.integers(BLOB_VERTICES[0], BLOB_VERTICES[1] + 1))
  angles = (np.arange(n) + rng.uniform(-0.3, 0.3, n)) * 2 * np.pi / n + rng.uniform(0, 2 * np.pi)
  radii = half * rng.uniform(*BLOB_RADIUS, n)
  return [(float(cx + r * np.cos(a)), float(cy + r * np.sin(a))) for a, r in zip(angles, radii)]


def _objects(spec):
  return [[o["shape"], list(o["bbox"]), shapes.object_rgb(o)] for o in spec["objects"]]


def _free_box(boxes, size: int, image_size: int, rng) -> list[int] | None:
  """A box of side `size` that keeps the scenes' gap to every box in `boxes`, or None after 200 tries."""
  gap = max(1, image_size // 32)
  for _ in range(200):
    x0, y0 = (int(v) for v in rng.integers(1, image_size - size, size=2))
    box = [x0, y0, x0 + size - 1, y0 + size - 1]
    if shapes._bbox_ok(box, boxes, gap):  # noqa: SLF001  (the scenes' own spacing rule)
      return box
  return None


def near_miss(spec: dict[str, Any], image_size: int, rng: np.random.Generator, kinds=KINDS):
  """(uint8 image (S, S, 3), kind) of one near miss of `spec`'s scene, or (None, None) where it has none."""
  options = applicable(spec, kinds)
  if not options:
    return None, None
  kind = options[int(rng.integers(len(options)))]
  objects = _objects(spec)
  if kind == "color":
    i = int(rng.choice([j for j, o in enumerate(spec["objects"]) if o["color"] is not None]))
    objects[i][2] = shifted_color(objects[i][2], rng)
  elif kind == "shape":
    i = int(rng.integers(len(objects)))
    others = [s for s in shapes.SHAPES if s != objects[i][0]]
    # an irregular blob two times in three, else another palette shape
    objects[i][0] = blob(objects[i][1], rng) if rng.random() < 2 / 3 else others[int(rng.integers(len(others)))]
  elif kind == "place":
    a, b = spec["relation"]["subject"], spec["relation"]["object"]
    objects[a][1], objects[b][1] = objects[b][1], objects[a][1]
  else:
    box = _free_box([o[1] for o in objects], objects[0][1][2] - objects[0][1][0] + 1, image_size, rng)
    if rng.random() < 0.5 and box is not None:
      objects.append([objects[0][0], box, objects[0][2]])
    else:
      del objects[int(rng.integers(len(objects)))]
  return shapes.render([tuple(o) for o in objects], image_size), kind
