"""The demo pipeline shipped in the package (`unclip_jax/assets/demo`, trained by `launch/train_demo.sh`):
small enough to ship, its provenance recorded in every stage, and it draws the colour a caption asks for."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from unclip_jax.data.shapes import COLORS
from unclip_jax.pipeline import Pipeline, default_pipeline, read_pipeline

MAX_BYTES = 30 * 2 ** 20  # issue 11: at most 30 MB in all


def test_the_packaged_demo_is_small_and_records_its_recipe_commit_and_evaluation():
  root = default_pipeline()
  assert sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) <= MAX_BYTES
  info = read_pipeline(root)
  assert set(info["paths"]) == {"clip", "prior", "decoder", "sr_64_256", "rerank_clip"}
  for stage, path in info["paths"].items():
    provenance = json.loads((path / "stage.json").read_text())["provenance"]
    assert "launch/train_demo.sh" in provenance["recipe"], stage
    assert re.fullmatch(r"[0-9a-f]{40}", provenance["commit"]), stage
    assert provenance["evaluation"]["compositional"]["tasks"]["single"]["heldout"]["accuracy"]["n"] > 0, stage
    assert provenance["wall_seconds"]["decoder"] > 0, stage


def _foreground_colour(image: np.ndarray) -> str:
  """The palette colour nearest the mean of the pixels that stand out from the black background."""
  pixels = image.reshape(-1, 3).astype(np.float64)
  fg = pixels[pixels.max(axis=1) > 100]
  assert len(fg) > 20, "nothing drawn"
  names = list(COLORS)
  palette = np.array([COLORS[n] for n in names], np.float64)
  return names[int(np.argmin(np.linalg.norm(palette - fg.mean(axis=0), axis=1)))]


@pytest.mark.slow
def test_the_packaged_demo_draws_the_asked_colour():
  pipe = Pipeline.load(default_pipeline())
  colours = ["red", "blue", "green", "yellow"]
  prompts = [f"a {c} {s}" for c, s in zip(colours, ("circle", "square", "triangle", "circle"))]
  out = pipe.generate(prompts, list(range(len(prompts))), pipe.settings())
  assert out["images"].shape == (len(prompts), 64, 64, 3)
  assert [_foreground_colour(im) for im in out["images"]] == colours
