"""Image plumbing shared by the suites: resizing uint8 batches, ground-truth renders, framed grids.

Why here and not in `unclip_jax.images`: the evaluators see images at their own sizes (the feature
network at 64 px, an evaluator CLIP at its own input size), so every suite resizes the same way: PIL's
antialiased bilinear filter, identical for generated and real images.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def resize(images: np.ndarray, size: int) -> np.ndarray:
  """uint8 (N, H, W, 3) → uint8 (N, size, size, 3); returned unchanged when already that size."""
  images = np.asarray(images, np.uint8)
  if images.shape[1:3] == (size, size):
    return images
  return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BILINEAR)) for im in images])


MARK = (30, 110, 255)  # framed_grid's `marked` edge


def framed_grid(images: np.ndarray, ok: list[bool] | None = None, columns: int = 8, frame: int = 2,
                marked: list[bool] | None = None) -> np.ndarray:
  """A grid of uint8 images, each framed green (passed) or red (failed) when `ok` is given; the `marked`
  ones (such as the candidate a pipeline keeps) with the top edge of their frame blue."""
  from unclip_jax.images import make_grid

  images = np.asarray(images, np.uint8)
  if ok is not None:
    colors = np.array([(40, 200, 60) if o else (220, 30, 30) for o in ok], np.uint8)
    padded = np.empty((len(images), images.shape[1] + 2 * frame, images.shape[2] + 2 * frame, 3), np.uint8)
    padded[:] = colors[:, None, None, :]
    if marked is not None:
      padded[np.asarray(marked, bool), :frame] = MARK
    padded[:, frame:-frame, frame:-frame] = images
    images = padded
  return make_grid(images, columns=min(columns, len(images)))
