"""Procedural captioned scenes (coloured circles, squares and triangles) for tests and toy trainings.

Every example is a pure function of (seed, split, index), so the set is random-access, reproducible and
infinite, which suits a tfds builder or a grain source. Captions follow a small grammar whose facts
(colour, shape, count, spatial relation) are checkable from the returned spec, and some (colour, shape)
and (relation, shape pair) combinations occur only in the "heldout" split, to measure compositional
generalisation. Only numpy and PIL are used.

An optional fifth kind, "negation" ("a red circle and no squares": the scene holds the named object
alone), is drawn only when asked for (`kinds=ALL_KINDS`), so the default set stays what it always was;
no default caption negates anything, and the option lets one measure what training on negations gains.

Another option, `unnamed=f`, draws a share f of the train scenes in colours outside the palette, one random RGB
colour per object, and leaves the colour out of their captions ("a circle left of a square"). Why: with seven
named colours and three shapes each shape is seen in only five or six colours, and a decoder trained on that
learns each (colour, shape) pair as a whole; unnamed colours show every shape in hundreds. They keep the
held-out pairs held out: no unnamed colour, for any shape, comes nearer a held-out pair's colour than the
nearest palette colour its shape is drawn in (`UNNAMED_GAPS`: yellow circles for orange, blue triangles for
purple, yellow squares for white). `unnamed_kinds` limits them to some caption kinds ("single", "count": the
scenes of one object type), so the captions of two-object scenes keep naming every colour they show.
"""

from __future__ import annotations

import re
from typing import Any, Iterator

import numpy as np
from PIL import Image, ImageDraw

BACKGROUND = (20, 20, 20)
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (150, 60, 190),
    "orange": (245, 140, 30),
    "white": (240, 240, 240),
}
SHAPES = ("circle", "square", "triangle")
RELATIONS = ("left of", "right of", "above", "below")
NUMBERS = {2: "two", 3: "three", 4: "four"}
KINDS = ("single", "count", "pair", "relation")
NEGATION = "negation"
ALL_KINDS = KINDS + (NEGATION,)  # KINDS stays the default: any set drawn from it is unchanged
SPLITS = ("train", "heldout")

# Never drawn in the train split; every heldout example contains at least one of its kind.
HELDOUT_OBJECTS = frozenset({("purple", "triangle"), ("orange", "circle"), ("white", "square")})
HELDOUT_RELATIONS = frozenset({("above", "triangle", "circle"), ("left of", "square", "triangle"),
                               ("below", "circle", "square"), ("right of", "triangle", "square")})

_SPLIT_SALT = {"train": 0x7A11, "heldout": 0x4E1D}
_KIND_SALT = {k: i for i, k in enumerate(KINDS)}
# Unnamed colours: at least this far (RGB Euclidean) from the background, so an object is always visible.
UNNAMED_MIN_CONTRAST = 80.0


def _objects(split: str) -> list[tuple[str, str]]:
  combos = [(c, s) for c in COLORS for s in SHAPES]
  return [o for o in combos if o not in HELDOUT_OBJECTS] if split == "train" else combos


def _gap(color: str, shape: str) -> float:
  """How far the nearest palette colour drawn with `shape` in the train split lies from `color`."""
  drawn = [COLORS[c] for c, s in _objects("train") if s == shape]
  return float(min(np.linalg.norm(np.subtract(COLORS[color], rgb)) for rgb in drawn))


# Per held-out pair's colour: the radius no unnamed colour enters (71 for orange, 106 purple, 202 white).
UNNAMED_GAPS = {color: _gap(color, shape) for color, shape in sorted(HELDOUT_OBJECTS)}


def unnamed_color(rng: np.random.Generator) -> tuple[int, int, int]:
  """A uniform random RGB colour outside every held-out colour's gap and visible on the background."""
  while True:
    rgb = rng.integers(0, 256, 3)
    if np.linalg.norm(rgb - np.asarray(BACKGROUND)) < UNNAMED_MIN_CONTRAST:
      continue
    if all(np.linalg.norm(rgb - np.asarray(COLORS[c])) >= r for c, r in UNNAMED_GAPS.items()):
      return tuple(int(v) for v in rgb)


def _bbox_ok(box, boxes, gap):
  x0, y0, x1, y1 = box
  return all(x1 + gap <= b[0] or b[2] + gap <= x0 or y1 + gap <= b[1] or b[3] + gap <= y0 for b in boxes)


def _relation_holds(relation: str, a, b) -> bool:
  """Whether box `a` is strictly `relation` box `b` (no overlap along the relation's axis)."""
  return {"left of": a[2] < b[0], "right of": a[0] > b[2], "above": a[3] < b[1], "below": a[1] > b[3]}[relation]


def _draw(draw: ImageDraw.ImageDraw, shape, box, color):
  """One object: a palette shape filling `box`, or, where `shape` is a list of (x, y) points, that polygon."""
  x0, y0, x1, y1 = box  # inclusive pixel bounds
  if not isinstance(shape, str):
    draw.polygon([tuple(map(float, p)) for p in shape], fill=color)
  elif shape == "circle":
    draw.ellipse((x0, y0, x1, y1), fill=color)
  elif shape == "square":
    draw.rectangle((x0, y0, x1, y1), fill=color)
  else:
    draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=color)


class ShapesScenes:
  """`scenes[i]` → (uint8 image (S, S, 3), caption, spec); deterministic in (seed, split, i).

  Args:
    image_size: side in pixels (64 by default; 32 works for quick tests).
    split: "train" (held-out combinations excluded) or "heldout" (each example uses one of them).
    seed: base seed of the whole set.
    kinds: caption kinds to draw from, uniformly: "single" ("a red circle"), "count" ("three blue
      squares"), "pair" ("a red circle and a blue square"), "relation" ("a red circle left of a ..."),
      and, only when named, "negation" ("a red circle and no squares": the named object alone).
    unnamed: the share of train scenes drawn in random colours with colour-free captions (module docstring);
      0 (the default) draws exactly the set it always drew.
    unnamed_kinds: the kinds whose scenes may be unnamed (None: every kind); the share applies within them.
  """

  def __init__(self, image_size: int = 64, split: str = "train", seed: int = 0, kinds=KINDS, unnamed: float = 0.0,
               unnamed_kinds=None):
    if split not in SPLITS:
      raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    unknown = set(kinds) - set(ALL_KINDS)
    if unknown or not kinds:
      raise ValueError(f"kinds must be a non-empty subset of {ALL_KINDS}, got {kinds!r}")
    if image_size < 24:
      raise ValueError(f"image_size must be at least 24 pixels, got {image_size}")
    if not 0.0 <= unnamed < 1.0:
      raise ValueError(f"unnamed must be in [0, 1), got {unnamed}")
    if unnamed and split != "train":
      raise ValueError("unnamed colours are for the train split only; the heldout split names every colour")
    if unnamed_kinds is not None and (not unnamed_kinds or set(unnamed_kinds) - set(kinds)):
      raise ValueError(f"unnamed_kinds must be a non-empty subset of the kinds drawn {tuple(kinds)}, "
                       f"got {unnamed_kinds!r}")
    self.image_size, self.split, self.seed, self.kinds = image_size, split, seed, tuple(kinds)
    self.unnamed = float(unnamed)
    self.unnamed_kinds = self.kinds if unnamed_kinds is None else tuple(unnamed_kinds)

  def __getitem__(self, index: int):
    rng = np.random.default_rng([self.seed, _SPLIT_SALT[self.split], int(index)])
    kind = self.kinds[rng.integers(len(self.kinds))]
    # no draw at 0, so the default set is unchanged; the draw precedes the kind test, so limiting the kinds keeps
    # every other scene of the same seed as it was
    unnamed = bool(self.unnamed) and rng.random() < self.unnamed and kind in self.unnamed_kinds
    for _ in range(100):  # layouts are rejection-sampled; a retry draws new sizes
      example = self._sample(rng, kind, unnamed)
      if example is not None:
        return example
    raise RuntimeError(f"could not lay out a {kind} scene at {self.image_size}px")  # pragma: no cover

  def __iter__(self) -> Iterator[tuple[np.ndarray, str, dict[str, Any]]]:
    i = 0
    while True:
      yield self[i]
      i += 1

  def batch(self, start: int, size: int):
    """(uint8 images (size, S, S, 3), list of captions, list of specs) for indices start..start+size-1."""
    items = [self[i] for i in range(start, start + size)]
    return np.stack([x[0] for x in items]), [x[1] for x in items], [x[2] for x in items]

  # -------------------------------------------------------------------------------------- sampling

  def _choose_objects(self, rng, kind):
    held = self.split == "heldout"
    pool = _objects(self.split)
    pick = lambda options: options[rng.integers(len(options))]  # noqa: E731
    if kind in ("single", "count", NEGATION):
      obj = pick(sorted(HELDOUT_OBJECTS)) if held else pick(pool)
      n = 1 if kind != "count" else int(rng.integers(2, 5))
      return [obj] * n, None
    if kind == "pair":
      first = pick(sorted(HELDOUT_OBJECTS)) if held else pick(pool)
      second = pick([o for o in pool if o != first])
      objs = [first, second]
      if rng.random() < 0.5:
        objs.reverse()
      return objs, None
    # relation: heldout examples use a held-out (relation, shape, shape) triple with ordinary objects
    train_pool = _objects("train")
    while True:
      relation = pick(RELATIONS)
      a, b = pick(train_pool), pick(train_pool)
      if a == b:
        continue
      triple = (relation, a[1], b[1])
      if (triple in HELDOUT_RELATIONS) == held:
        return [a, b], relation

  def _sample(self, rng, kind, unnamed=False):
    objs, relation = self._choose_objects(rng, kind)
    negated = None
    if kind == NEGATION:  # a shape that is absent: one of the two the named object is not
      others = [sh for sh in SHAPES if sh != objs[0][1]]
      negated = others[rng.integers(len(others))]
    return self._lay_out(rng, kind, objs, relation, negated, unnamed)

  def redraw(self, spec: dict[str, Any], rng: np.random.Generator):
    """(image, caption, spec): another scene with `spec`'s caption, i.e. the same objects, relation and negated
    shape at new sizes and places. Why: a second real image of a caption shows how far apart two correct
    images can be (the reference for any embedding-matching score)."""
    objs = [(o["color"], o["shape"]) for o in spec["objects"]]
    if any(c is None for c, _ in objs):
      raise ValueError(f"cannot redraw {caption_for(spec)!r}: its colours are unnamed")
    relation = spec["relation"]["relation"] if spec.get("relation") else None
    for _ in range(100):
      example = self._lay_out(rng, spec["kind"], objs, relation, spec.get("negated"))
      if example is not None:
        return example
    raise RuntimeError(f"could not lay out {caption_for(spec)!r} again at {self.image_size}px")  # pragma: no cover

  def _lay_out(self, rng, kind, objs, relation, negated, unnamed=False):
    """Sizes and places the objects (None when a draw does not fit), draws them, and writes the spec. With
    `unnamed`, each distinct palette object becomes one random colour (a count's objects stay alike) and
    the spec's colours become None, with the drawn colour under "rgb"."""
    s = self.image_size
    lo, hi = max(5, round(s * 12 / 64)), max(7, round(s * 18 / 64))
    gap = max(1, s // 32)
    boxes = []
    for i, _ in enumerate(objs):
      for _ in range(200):
        size = int(rng.integers(lo, hi + 1))
        x0, y0 = (int(v) for v in rng.integers(1, s - size, size=2))
        box = (x0, y0, x0 + size - 1, y0 + size - 1)
        if not _bbox_ok(box, boxes, gap):
          continue
        if relation is not None and i == 1 and not _relation_holds(relation, boxes[0], box):
          continue
        boxes.append(box)
        break
      else:
        return None
    colors = [COLORS[c] for c, _ in objs]
    if unnamed:
      drawn = {o: unnamed_color(rng) for o in dict.fromkeys(objs)}
      colors = [drawn[o] for o in objs]
      objs = [(None, sh) for _, sh in objs]
    image = render([(shape, box, rgb) for (_, shape), box, rgb in zip(objs, boxes, colors)], s)
    spec = {
        "kind": kind,
        "objects": [{"color": c, "shape": sh, "bbox": list(b)} for (c, sh), b in zip(objs, boxes)],
        "counts": {_name(c, sh): objs.count((c, sh)) for c, sh in dict.fromkeys(objs)},
        "relation": None if relation is None else {"relation": relation, "subject": 0, "object": 1},
        "split": self.split,
    }
    if negated is not None:
      spec["negated"] = negated
    if unnamed:
      for o, rgb in zip(spec["objects"], colors):
        o["rgb"] = list(rgb)
    return image, caption_for(spec), spec


def render(objects, image_size: int) -> np.ndarray:
  """uint8 (S, S, 3): `objects`, (shape, inclusive bbox, rgb) each, drawn in order on the background (a shape
  is a `SHAPES` name or a polygon's points, `_draw`)."""
  image = Image.new("RGB", (image_size, image_size), BACKGROUND)
  draw = ImageDraw.Draw(image)
  for shape, box, rgb in objects:
    _draw(draw, shape, box, tuple(int(v) for v in rgb))
  return np.asarray(image, dtype=np.uint8)


def object_rgb(obj: dict[str, Any]) -> tuple[int, int, int]:
  """The colour a spec's object was drawn in: its palette colour, or the "rgb" of an unnamed one."""
  return COLORS[obj["color"]] if obj["color"] is not None else tuple(obj["rgb"])


def render_spec(spec: dict[str, Any], image_size: int) -> np.ndarray:
  """The scene a spec describes, drawn again (pixel for pixel the image it came with)."""
  return render([(o["shape"], o["bbox"], object_rgb(o)) for o in spec["objects"]], image_size)


def _name(color: str | None, shape: str) -> str:
  return shape if color is None else f"{color} {shape}"


def caption_for(spec: dict[str, Any]) -> str:
  """The caption of a spec, following the grammar in the module docstring (an unnamed colour, None, is
  left out: "a circle")."""
  names = [_name(o["color"], o["shape"]) for o in spec["objects"]]
  kind = spec["kind"]
  if kind == "single":
    return f"a {names[0]}"
  if kind == "count":
    return f"{NUMBERS[len(names)]} {names[0]}s"
  if kind == "pair":
    return f"a {names[0]} and a {names[1]}"
  if kind == NEGATION:
    return f"a {names[0]} and no {spec['negated']}s"
  return f"a {names[0]} {spec['relation']['relation']} a {names[1]}"


_COLOR_RE = "|".join(COLORS)
_SHAPE_RE = "|".join(SHAPES)
_OBJ = rf"a ({_COLOR_RE}) ({_SHAPE_RE})"
_PATTERNS = [
    ("single", re.compile(rf"^{_OBJ}$")),
    ("count", re.compile(rf"^({'|'.join(NUMBERS.values())}) ({_COLOR_RE}) ({_SHAPE_RE})s$")),
    ("pair", re.compile(rf"^{_OBJ} and {_OBJ}$")),
    ("relation", re.compile(rf"^{_OBJ} ({'|'.join(RELATIONS)}) {_OBJ}$")),
    (NEGATION, re.compile(rf"^{_OBJ} and no ({_SHAPE_RE})s$")),
]


def parse_caption(caption: str) -> dict[str, Any]:
  """Caption → {"kind", "objects": [(color, shape), ...] in caption order, "relation": str | None}, and
  for a negation the absent shape as "negated" ("a red circle and no squares" → objects [("red", "circle")]).

  Raises ValueError for text outside the grammar, so evaluations can check generated captions too.
  """
  for kind, pattern in _PATTERNS:
    m = pattern.match(caption)
    if not m:
      continue
    g = m.groups()
    if kind == "single":
      return {"kind": kind, "objects": [(g[0], g[1])], "relation": None}
    if kind == "count":
      n = {v: k for k, v in NUMBERS.items()}[g[0]]
      return {"kind": kind, "objects": [(g[1], g[2])] * n, "relation": None}
    if kind == "pair":
      return {"kind": kind, "objects": [(g[0], g[1]), (g[2], g[3])], "relation": None}
    if kind == NEGATION:
      return {"kind": kind, "objects": [(g[0], g[1])], "relation": None, "negated": g[2]}
    return {"kind": kind, "objects": [(g[0], g[1]), (g[3], g[4])], "relation": g[2]}
  raise ValueError(f"caption {caption!r} is outside the shapes grammar")


def caption_is_heldout(caption: str) -> bool:
  """Whether a caption names a held-out combination, so that no train image fits it (False outside the
  grammar). CLIP hard negatives use it: a negative no train image fits would teach "this is never true"."""
  try:
    parsed = parse_caption(caption)
  except ValueError:
    return False
  return _uses_heldout(parsed["objects"], parsed["relation"])


def is_heldout(spec: dict[str, Any]) -> bool:
  """Whether a spec uses any held-out (colour, shape) or (relation, shape, shape) combination."""
  rel = spec.get("relation")
  return _uses_heldout([(o["color"], o["shape"]) for o in spec["objects"]], rel["relation"] if rel else None)


def _uses_heldout(objs: list[tuple[str, str]], relation: str | None) -> bool:
  if any(o in HELDOUT_OBJECTS for o in objs):
    return True
  return relation is not None and (relation, objs[0][1], objs[1][1]) in HELDOUT_RELATIONS
