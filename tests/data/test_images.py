"""`unclip_jax.images`: one resize/crop/alpha policy for files, encoded bytes and arrays."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from unclip_jax import images
from unclip_jax.errors import UserError


def _clip_reference(image: Image.Image, size: int) -> np.ndarray:
  """CLIP's preprocessing written out: torchvision Resize(size, BICUBIC) then CenterCrop(size) on RGB."""
  w, h = image.size
  scale = size / min(w, h)
  w, h = max(size, round(w * scale)), max(size, round(h * scale))
  resized = image.convert("RGB").resize((w, h), Image.Resampling.BICUBIC)
  left, top = (w - size) // 2, (h - size) // 2
  return np.asarray(resized.crop((left, top, left + size, top + size)))


def test_non_square_file_short_side_resized_then_centre_cropped(tmp_path):
  noise = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
  Image.fromarray(noise).save(tmp_path / "img.png")
  image = images.load_image(tmp_path / "img.png", 24)  # 56x40 → 34x24 → centre 24x24
  assert image.shape == (24, 24, 3) and image.dtype == np.uint8
  np.testing.assert_array_equal(image, _clip_reference(Image.fromarray(noise), 24))
  tall = np.zeros((80, 40, 3), np.uint8)
  tall[20:60] = (0, 0, 255)  # blue middle half between black ends
  Image.fromarray(tall).save(tmp_path / "tall.png")
  assert np.abs(images.load_image(tmp_path / "tall.png", 16)[3:-3].astype(int) - [0, 0, 255]).max() <= 2


def test_grayscale_becomes_three_equal_channels(tmp_path):
  grey = np.random.default_rng(1).integers(0, 255, (32, 48), dtype=np.uint8)
  Image.fromarray(grey, mode="L").save(tmp_path / "gray.jpg")
  image = images.load_image(tmp_path / "gray.jpg", 16)
  assert image.shape == (16, 16, 3) and image.dtype == np.uint8
  assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()
  np.testing.assert_array_equal(images.fit_image(grey, 16), images.fit_image(grey[..., None], 16))
  np.testing.assert_array_equal(images.fit_image(grey, 16)[..., 0], _clip_reference(Image.fromarray(grey), 16)[..., 0])


def test_transparency_is_composited_over_white(tmp_path):
  rgba = np.zeros((20, 30, 4), np.uint8)
  rgba[..., :3] = (10, 200, 30)  # the colour under the alpha must not leak through where alpha is 0
  rgba[:, 15:, 3] = 255
  Image.fromarray(rgba).save(tmp_path / "half.png")
  image = images.load_image(tmp_path / "half.png", 20).astype(int)
  assert (image[:, :3] == 255).all() and (image[:, -3:] == (10, 200, 30)).all()
  np.testing.assert_array_equal(images.fit_image(rgba, 20), image)  # arrays follow the same policy as files
  la = Image.fromarray(np.zeros((8, 8), np.uint8), mode="L")
  la.putalpha(128)  # half-transparent black over white: mid grey
  la.save(tmp_path / "la.png")
  assert np.abs(images.load_image(tmp_path / "la.png", 8).astype(int) - 127).max() <= 1
  palette = Image.new("P", (8, 8), 0)
  palette.putpalette([0, 0, 0] * 256)
  palette.save(tmp_path / "palette.png", transparency=0)
  assert (images.load_image(tmp_path / "palette.png", 8) == 255).all()
  assert (images.to_rgb(np.zeros((4, 4, 4), np.uint8)) == 255).all()


def test_files_bytes_and_arrays_share_the_policy(tmp_path):
  noise = np.random.default_rng(2).integers(0, 255, (30, 50, 3), dtype=np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(noise).save(buffer, format="PNG")
  (tmp_path / "noise.png").write_bytes(buffer.getvalue())
  from_file = images.load_image(tmp_path / "noise.png", 12)
  np.testing.assert_array_equal(images.decode_image(buffer.getvalue(), 12), from_file)
  np.testing.assert_array_equal(images.fit_image(noise, 12), from_file)
  same = images.fit_image(noise[:12, :12], 12)
  np.testing.assert_array_equal(same, noise[:12, :12])  # the right size passes unchanged
  assert images.decode_image(b"\x89PNG\r\n\x1a\n truncated", 12) is None
  with pytest.raises(UserError, match="uint8"):
    images.fit_image(noise.astype(np.float32), 12)
  with pytest.raises(UserError, match=r"\(H, W, 1\|3\|4\)"):
    images.to_rgb(np.zeros((4, 4, 2), np.uint8))


@pytest.mark.parametrize("case, message", [
    ("missing.png", "does not exist"),
    ("notes.png", "not an image file PIL can read"),
    ("folder", "is a folder"),
    ("truncated.png", "cannot read image"),
])
def test_unreadable_files_are_one_line_user_errors(tmp_path, case, message):
  (tmp_path / "notes.png").write_text("this is not an image")
  (tmp_path / "folder").mkdir()
  buffer = io.BytesIO()
  Image.fromarray(np.random.default_rng(3).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, format="PNG")
  (tmp_path / "truncated.png").write_bytes(buffer.getvalue()[:200])
  with pytest.raises(UserError, match=message) as error:
    images.load_image(tmp_path / case, 16)
  assert "\n" not in str(error.value) and str(tmp_path / case) in str(error.value)
