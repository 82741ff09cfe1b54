"""Input images for the sampling CLI's applications."""

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="module")
def images(tmp_path_factory):
  d = tmp_path_factory.mktemp("img")
  rng = np.random.default_rng(0)
  Image.fromarray((rng.random((40, 50, 3)) * 255).astype(np.uint8)).save(d / "a.png")
  Image.fromarray((rng.random((30, 30, 3)) * 255).astype(np.uint8)).save(d / "b.jpg")
  (d / "not_an_image.png").write_text("hello")
  return d
