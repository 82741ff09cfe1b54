"""Images out: [-1, 1] float batches to uint8, grids, and PNG files written atomically."""

from __future__ import annotations

import io
import math
import os

import numpy as np
from PIL import Image

from unclip_jax.io import write_bytes_atomic


def to_uint8(images) -> np.ndarray:
  """NHWC floats in [-1, 1] (values outside are clipped) → uint8 in [0, 255]."""
  x = np.asarray(images, np.float32)
  return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def make_grid(images: np.ndarray, columns: int | None = None, pad: int = 2, fill: int = 255) -> np.ndarray:
  """Tiles uint8 NHWC `images` into one HWC image, `columns` wide (default: as square as possible)."""
  images = np.asarray(images)
  if images.ndim != 4 or not len(images):
    raise ValueError(f"make_grid needs a non-empty NHWC batch, got shape {images.shape}")
  n, h, w, c = images.shape
  columns = columns or math.ceil(math.sqrt(n))
  rows = math.ceil(n / columns)
  grid = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, c), fill, np.uint8)
  for i, image in enumerate(images):
    r, col = divmod(i, columns)
    y, x = pad + r * (h + pad), pad + col * (w + pad)
    grid[y:y + h, x:x + w] = image
  return grid


def png_bytes(image: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(np.asarray(image, np.uint8)).save(buffer, format="PNG")
  return buffer.getvalue()


def save_png(path: str | os.PathLike, image: np.ndarray) -> None:
  """Writes one uint8 HWC image as a PNG, atomically."""
  write_bytes_atomic(path, png_bytes(image))
