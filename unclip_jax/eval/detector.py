"""A strict rule-based object detector for `shapes` scenes, and the GenEval-style check of a caption.

Why rules and not a learned detector: the scenes are drawn from a known palette on a known background, so
palette segmentation + connected components + template matching recovers every object of a ground-truth
render exactly, and its failures are explainable. Being strict is the point: an image passes a caption
only if it is clean (mostly background, almost no pixels that are neither background nor part of a
recognised object) and the recognised objects are exactly the caption's objects, nothing more. A noise
image or a cluttered one therefore passes nothing.

Steps: each pixel takes the nearest palette colour
(`shapes.BACKGROUND` or `shapes.COLORS`) within `tol` RGB units, else "unknown" (unknown pixels are
replaced by their 3x3 median first, which removes pixel noise); each colour's 8-connected
components of at least `min_area` pixels are objects. A blurred edge is given back to its object: near
the component, a pixel on the line from the background to the object's colour counts as the object when
it is nearer the colour than the background (the midpoint, where a blurred edge lies). An object's shape
is the template (circle, square, apex-up triangle drawn in its box as the builder draws it) with the best
IoU, kept only if that IoU is high and clearly above the runner-up.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from unclip_jax.data import shapes

COLOR_NAMES = tuple(shapes.COLORS)
PALETTE = np.array([shapes.BACKGROUND] + [shapes.COLORS[c] for c in COLOR_NAMES], np.float32)  # 0 = background
UNKNOWN = -1
POSITION_THRESHOLD = 0.1  # GenEval's default


@dataclasses.dataclass(frozen=True)
class DetectorConfig:
  """Thresholds, for a 64 px image; areas scale with the image area."""
  tol: float = 40.0  # max RGB distance to a palette colour (the closest two, orange/yellow, are 71 apart)
  min_area: float = 40.0  # pixels at 64 px; the builder's smallest object (a 12 px triangle) has ~75
  min_iou: float = 0.65  # IoU of the component with its best shape template
  min_margin: float = 0.1  # ... and by how much it beats the next template (an ideal circle vs square: 0.21)
  max_aspect: float = 1.35  # box width/height (and height/width): the builder draws square boxes
  median: bool = True  # 3x3 median of off-palette pixels first
  dilate: int = 2  # pixels around an object that may hold its blurred edge without counting as clutter
  max_clutter: float = 0.01  # share of pixels neither background nor (near) a recognised object
  min_background: float = 0.5  # share of background pixels


@dataclasses.dataclass(frozen=True)
class Detection:
  color: str
  shape: str | None  # None: a blob of a palette colour that matches no shape template
  bbox: tuple[int, int, int, int]  # inclusive pixel bounds x0, y0, x1, y1 (the builder's convention)
  area: int
  iou: float


@dataclasses.dataclass(frozen=True)
class Scene:
  objects: tuple[Detection, ...]
  background: float  # share of background pixels
  clutter: float  # share of pixels explained neither as background nor as (the edge of) an object

  def clean(self, config: DetectorConfig = DetectorConfig()) -> bool:
    return (self.background >= config.min_background and self.clutter <= config.max_clutter
            and all(o.shape is not None for o in self.objects))

  def names(self) -> list[tuple[str, str | None]]:
    return sorted(((o.color, o.shape) for o in self.objects), key=str)


def segment(image: np.ndarray, tol: float) -> np.ndarray:
  """uint8 (H, W, 3) → int (H, W): 0 background, 1..7 the colours of `COLOR_NAMES`, -1 unknown."""
  x = np.asarray(image, np.float32)[..., :3]
  d = np.linalg.norm(x[..., None, :] - PALETTE, axis=-1)  # (H, W, 8)
  labels = d.argmin(-1)
  labels[d.min(-1) > tol] = UNKNOWN
  return labels


@lru_cache(maxsize=4096)
def _template(shape: str, w: int, h: int) -> np.ndarray:
  """The builder's drawing of `shape` in a w x h box (bool (h, w))."""
  im = Image.new("1", (w, h), 0)
  draw = ImageDraw.Draw(im)
  x1, y1 = w - 1, h - 1
  if shape == "circle":
    draw.ellipse((0, 0, x1, y1), fill=1)
  elif shape == "square":
    draw.rectangle((0, 0, x1, y1), fill=1)
  else:
    draw.polygon([(x1 / 2, 0), (x1, y1), (0, y1)], fill=1)
  return np.asarray(im, bool)


def classify(mask: np.ndarray, config: DetectorConfig = DetectorConfig()) -> tuple[str | None, float]:
  """A component's mask cropped to its box → (shape or None, best IoU)."""
  h, w = mask.shape
  if max(w / h, h / w) > config.max_aspect:
    return None, 0.0
  ious = []
  for shape in shapes.SHAPES:
    t = _template(shape, w, h)
    ious.append((np.logical_and(t, mask).sum() / np.logical_or(t, mask).sum(), shape))
  ious.sort(reverse=True)
  (best, shape), (second, _) = ious[0], ious[1]
  if best < config.min_iou or best - second < config.min_margin:
    return None, float(best)
  return shape, float(best)


def detect(image: np.ndarray, config: DetectorConfig = DetectorConfig()) -> Scene:
  """Objects, background share and clutter share of one uint8 (H, W, 3) image."""
  from scipy import ndimage

  image = np.asarray(image)[..., :3]
  h, w = image.shape[:2]
  scale = (h * w) / (64 * 64)
  labels = segment(image, config.tol)
  if config.median:  # only off-palette pixels are filtered, so gaps between objects stay open
    filtered = ndimage.median_filter(image, size=(3, 3, 1), mode="nearest")
    image = np.where((labels == UNKNOWN)[..., None], filtered, image)
    labels = segment(image, config.tol)
  x = image.astype(np.float32)
  bg = PALETTE[0]
  objects, object_mask = [], np.zeros((h, w), bool)
  eight = np.ones((3, 3), bool)
  for ci, name in enumerate(COLOR_NAMES, start=1):
    comp, n = ndimage.label(labels == ci, structure=eight)
    if not n:
      continue
    direction = PALETTE[ci] - bg
    for k, sl in enumerate(ndimage.find_objects(comp), start=1):
      core = comp[sl] == k
      if core.sum() < config.min_area * scale:
        continue  # a fragment: left unexplained
      mask = _with_edges(comp == k, sl, x, bg, direction, labels, config)
      ys, xs = np.nonzero(mask)
      y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
      shape, iou = classify(mask[y0:y1 + 1, x0:x1 + 1], config)
      objects.append(Detection(name, shape, (int(x0), int(y0), int(x1), int(y1)), int(mask.sum()), iou))
      object_mask |= mask
  near = object_mask
  if config.dilate:
    near = ndimage.binary_dilation(object_mask, structure=eight, iterations=config.dilate)
  background = labels == 0
  clutter = float(np.mean(~(background | near)))
  objects.sort(key=lambda o: (o.bbox[1], o.bbox[0]))
  return Scene(tuple(objects), float(background.mean()), clutter)


def _with_edges(core: np.ndarray, sl, x: np.ndarray, bg: np.ndarray, direction: np.ndarray, labels: np.ndarray,
                config: DetectorConfig) -> np.ndarray:
  """The component `core` (bool (H, W)) plus the blurred-edge pixels within `dilate` px of it that lie
  near the background→colour line and past its midpoint, and are not another object's colour."""
  from scipy import ndimage

  h, w = core.shape
  pad = config.dilate
  ys = slice(max(sl[0].start - pad, 0), min(sl[0].stop + pad, h))
  xs = slice(max(sl[1].start - pad, 0), min(sl[1].stop + pad, w))
  c, px, lab = core[ys, xs], x[ys, xs] - bg, labels[ys, xs]
  t = px @ direction / float(direction @ direction)
  off_line = np.linalg.norm(px - t[..., None] * direction, axis=-1)
  near = ndimage.binary_dilation(c, structure=np.ones((3, 3), bool), iterations=pad) if pad else c
  edge = near & (t >= 0.5) & (off_line <= config.tol) & (lab <= 0)
  out = np.zeros_like(core)
  out[ys, xs] = c | edge
  return out


def relative_position(box_a, box_b, threshold: float = POSITION_THRESHOLD) -> set[str]:
  """GenEval's rule: the relations of box A to box B from their centres, after shrinking the offset by
  `threshold` × the summed box sizes; a relation holds when the shrunk offset, divided by the true
  offset's length, exceeds 0.5 along its axis. Boxes are (x0, y0, x1, y1), x1/y1 exclusive."""
  boxes = np.array([box_a, box_b], np.float64).reshape(2, 2, 2)
  center_a, center_b = boxes.mean(axis=-2)
  dim_a, dim_b = np.abs(np.diff(boxes, axis=-2))[..., 0, :]
  offset = center_a - center_b
  revised = np.maximum(np.abs(offset) - threshold * (dim_a + dim_b), 0) * np.sign(offset)
  if np.all(np.abs(revised) < 1e-3):
    return set()
  dx, dy = revised / np.linalg.norm(offset)
  out = set()
  if dx < -0.5:
    out.add("left of")
  if dx > 0.5:
    out.add("right of")
  if dy < -0.5:
    out.add("above")
  if dy > 0.5:
    out.add("below")
  return out


def _exclusive(bbox) -> tuple[int, int, int, int]:
  x0, y0, x1, y1 = bbox
  return x0, y0, x1 + 1, y1 + 1


def check(scene: Scene, caption: str, config: DetectorConfig = DetectorConfig()) -> dict[str, Any]:
  """Whether `scene` shows `caption` (a `shapes` caption): {"pass", "clean", "objects", "relation",
  "negated_present", "reason"}. `pass` needs a clean scene whose objects are exactly the caption's
  (as a multiset; a negation's named object alone), and for a relation GenEval's rule on the boxes;
  "relation_dataset" is the builder's own rule (boxes apart along the axis), for reference."""
  parsed = shapes.parse_caption(caption)
  want = sorted(parsed["objects"])
  have = sorted((o.color, o.shape) for o in scene.objects if o.shape is not None)
  clean = scene.clean(config)
  objects_ok = clean and have == want
  out = {"clean": clean, "objects": objects_ok, "relation": None, "relation_dataset": None, "negated_present": None}
  reasons = []
  if not clean:
    reasons.append(f"not clean (background {scene.background:.2f}, clutter {scene.clutter:.3f}, "
                   f"{sum(o.shape is None for o in scene.objects)} unrecognised blobs)")
  if have != want:
    reasons.append(f"objects {have} != {want}")
  ok = objects_ok
  if parsed["relation"] is not None:
    if objects_ok:
      boxes = {(o.color, o.shape): o.bbox for o in scene.objects}
      a, b = boxes[parsed["objects"][0]], boxes[parsed["objects"][1]]
      out["relation"] = parsed["relation"] in relative_position(_exclusive(a), _exclusive(b))
      out["relation_dataset"] = bool(shapes._relation_holds(parsed["relation"], a, b))  # noqa: SLF001
      if not out["relation"]:
        reasons.append(f"not {parsed['relation']} by GenEval's rule")
    else:
      out["relation"] = out["relation_dataset"] = False
    ok = ok and out["relation"]
  if parsed["kind"] == shapes.NEGATION:
    out["negated_present"] = any(o.shape == parsed["negated"] for o in scene.objects)
  out["pass"] = bool(ok)
  out["reason"] = "; ".join(reasons)
  return out


def check_images(images: np.ndarray, captions: list[str], config: DetectorConfig = DetectorConfig()) -> list[dict]:
  """`check` of each (image, caption) pair."""
  return [check(detect(im, config), cap, config) for im, cap in zip(images, captions)]
