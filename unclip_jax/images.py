"""Images in and out: the one policy that turns any image into a square RGB input, and PNG/grid output.

In (`load_image` for files, `decode_image` for encoded bytes, `fit_image` for arrays), as CLIP's own
preprocessing (torchvision `Resize(size, BICUBIC)` + `CenterCrop(size)` on a PIL image):
  * colour: converted to RGB; transparency (RGBA, LA, PA, palette with a transparent colour, or a
    4-channel array) is composited over opaque white (`BACKGROUND`), not dropped;
  * size: the short side resized to `size` with PIL's bicubic filter (antialiased when shrinking; the
    long side rounded, never below `size`), then the centre `size` x `size` square cropped (an odd
    excess leaves the extra pixel on the right/bottom); an image already `size` x `size` is unchanged;
  * decoding: JPEGs use PIL's draft mode (DCT scaling to no less than `size` on either side), which
    makes large photos several times faster to read and moves a 1600x1200 photo fitted to 224 pixels by
    0.5 levels on average (4 at most) against a full decode.
The zero-shot CLI, `sample`'s image inputs, the `image_text` builder and the CLIP embedding of prepared
datasets (`unclip_jax.models.clip_encoder.clip_pixels`) all go through this one function.

Out: [-1, 1] float batches to uint8, grids, and PNG files written atomically.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from unclip_jax.errors import UserError
from unclip_jax.io import write_bytes_atomic

BACKGROUND = (255, 255, 255)
FIT_POLICY = ("RGB, transparency composited over white; short side resized to the target size with PIL's "
              "bicubic filter (antialiased), centre-cropped; uint8")


def load_image(path: str | os.PathLike, size: int) -> np.ndarray:
  """An image file → uint8 (size, size, 3) by the module's policy; a one-line `UserError` if it cannot be read."""
  path = Path(path)
  try:
    with Image.open(path) as image:
      return _fit(image, size)
  except FileNotFoundError:
    raise UserError(f"image {path} does not exist") from None
  except IsADirectoryError:
    raise UserError(f"image {path} is a folder, not an image file") from None
  except UnidentifiedImageError:
    raise UserError(f"{path} is not an image file PIL can read") from None
  except OSError as e:
    raise UserError(f"cannot read image {path}: {e.strerror or e}") from None


def decode_image(data: bytes, size: int) -> np.ndarray | None:
  """Encoded image bytes → uint8 (size, size, 3) by the module's policy; None for anything PIL cannot decode."""
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # PIL warns on odd-but-readable files; only failures matter here
      with Image.open(io.BytesIO(data)) as image:
        return _fit(image, size)
  except Exception:  # noqa: BLE001 - PIL raises many types (OSError, SyntaxError, ValueError, DecompressionBomb...)
    return None


def fit_image(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 (H, W), (H, W, 1|3|4) → uint8 (size, size, 3) by the module's policy."""
  image = to_rgb(image)
  if image.shape[:2] == (size, size):
    return image
  return _fit(Image.fromarray(image), size)


def to_rgb(image: np.ndarray) -> np.ndarray:
  """uint8 (H, W), (H, W, 1|3|4) → uint8 (H, W, 3): grey repeated, alpha composited over `BACKGROUND`."""
  image = np.asarray(image)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (3, 4)):
    raise UserError(f"images must be uint8 (H, W) or (H, W, 1|3|4), got {image.dtype} {image.shape}")
  if image.ndim == 3 and image.shape[-1] == 3:
    return image
  return np.asarray(_rgb(Image.fromarray(image)), np.uint8)


def _fit(image: Image.Image, size: int) -> np.ndarray:
  image.draft("RGB", (size, size))  # JPEG only: decode at a reduced scale that keeps both sides ≥ size
  image = _rgb(image)
  w, h = image.size
  scale = size / min(w, h)
  new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
  image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
  left, top = (new_w - size) // 2, (new_h - size) // 2
  return np.asarray(image.crop((left, top, left + size, top + size)), np.uint8)


def _rgb(image: Image.Image) -> Image.Image:
  if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
    rgba = image.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
    canvas.alpha_composite(rgba)
    return canvas.convert("RGB")
  return image.convert("RGB")


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
