"""The prior suite's reference is a second real render of each caption: with a stand-in CLIP that sees only
which palette colours an image holds, that render matches the first exactly (same caption); with one that
also sees where they are, it does not (new layout). The paired rows are per-caption differences, and a
fixed point (a caption's colours at no place) beats an oracle prior that draws yet another real render. A
prior whose samples ignore their seed shows as two samples of a caption at cosine 1. The prior is scored on
its training captions' kinds, rendered at its CLIP's resolution."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from unclip_jax.data import shapes
from unclip_jax.eval import prior_eval
from unclip_jax.eval.context import Context, Options

PALETTE = np.array(list(shapes.COLORS.values()), np.float32)


class OraclePrior:
  """Embeddings from pixels: per palette colour, whether it is present and (with `layout`) its centroid."""

  def __init__(self, layout: bool, collapsed: bool = False, image_size: int = 64):
    self.layout, self.collapsed = layout, collapsed
    self.clip_config = SimpleNamespace(image_size=image_size)
    self.specs = {}  # caption -> spec, filled from the suite's own prompt sets
    self.image_sizes = set()  # the sizes of the images it was given
    self.off_palette = 0.0  # the largest share of pixels off the palette and background in one call (resizing)

  def settings(self, overrides=None):
    return {"prior": SimpleNamespace(to_dict=lambda: {})}

  def encode_images(self, images, batch=None):
    x = np.asarray(images, np.float32)
    self.image_sizes.add(x.shape[1:3])
    pure = np.concatenate([PALETTE, np.float32([shapes.BACKGROUND])])
    self.off_palette = max(self.off_palette, float((np.abs(x[..., None, :] - pure).max(-1).min(-1) > 2).mean()))
    hit = np.abs(x[:, :, :, None, :] - PALETTE).max(-1) < 2  # (n, h, w, colours)
    present = hit.any((1, 2)).astype(np.float32)
    if not self.layout:
      return present
    ys, xs = np.mgrid[:x.shape[1], :x.shape[2]] / x.shape[1] - 0.5
    mass = np.maximum(hit.sum((1, 2)), 1)
    centre = [(hit * g[None, :, :, None]).sum((1, 2)) / mass for g in (ys, xs)]
    return np.concatenate([present, 2 * centre[0], 2 * centre[1]], axis=-1)

  def encode_text(self, captions):
    present = np.array([[f"{c} " in p for c in shapes.COLORS] for p in captions], np.float32)
    embeds = np.concatenate([present, np.zeros((len(captions), 14), np.float32)], -1) if self.layout else present
    return SimpleNamespace(embeds=embeds, captions=list(captions))

  def sample_prior(self, text, keys, settings):
    """A new real render per caption and key; `collapsed`: the same one for every key."""
    keys = np.zeros_like(keys) if self.collapsed else np.asarray(keys)
    size = self.clip_config.image_size
    drawn = [shapes.ShapesScenes(size, self.specs[c]["split"]).redraw(self.specs[c], np.random.default_rng(k.tolist()))[0]
             for c, k in zip(text.captions, keys)]
    return self.encode_images(np.stack(drawn))


def _run(layout: bool, collapsed: bool = False, pipe=None):
  options = Options(num=12, batch=5, seed=3)
  pipe = pipe or OraclePrior(layout, collapsed)
  ctx = Context(pipe, options, log=lambda m: None)
  for split in ("seen", "heldout"):
    cell = prior_eval.prompt_set(split, options.num, options.seed, pipe.clip_config.image_size)
    pipe.specs.update(zip(cell["captions"], cell["specs"]))
  return prior_eval.run(ctx)["splits"]


def test_the_prior_is_scored_on_its_training_captions_at_the_clips_resolution():
  """Real renders at the CLIP's own size (the embedded training data's), never resized from 64 px, and no
  negation captions (no training caption holds one)."""
  pipe = OraclePrior(layout=True, image_size=32)
  _run(True, pipe=pipe)
  assert pipe.image_sizes == {(32, 32)} and pipe.off_palette == 0.0  # drawn at 32 px, not resized to it
  kinds = {spec["kind"] for spec in pipe.specs.values()}
  assert kinds <= set(shapes.KINDS) and len(kinds) > 1, kinds
  assert len(prior_eval.prompt_set("seen", 60, 0, 32)["captions"]) == 60
  assert not any(spec["kind"] == shapes.NEGATION for spec in prior_eval.prompt_set("heldout", 60, 0, 32)["specs"])


def test_another_render_of_a_caption_has_its_colours_at_new_places():
  for split, cell in _run(layout=False).items():
    assert cell["reference_another_render"]["mean"] == pytest.approx(1.0), split
    assert cell["prior_minus_another_render_paired"]["mean"] == pytest.approx(0.0), split
  for split, cell in _run(layout=True).items():
    assert cell["reference_another_render"]["mean"] < 0.97, split


def test_paired_differences_and_a_fixed_point_that_beats_a_perfect_sampler():
  for split, cell in _run(layout=True).items():
    prior = cell["cos_prior_vs_image"]["mean"]
    for key, reference in (("prior_minus_another_render_paired", "reference_another_render"),
                           ("prior_minus_text_paired", "baseline_text_embedding")):
      assert cell[key]["mean"] == pytest.approx(prior - cell[reference]["mean"]), (split, key)
      assert 0 < cell[key]["sem"] < 0.2, (split, key)
    # The text embedding here is each caption's colours at no place: nearer every render than renders are
    # to each other, so it beats the oracle prior (a perfect sampler), which is why it is not the bar.
    assert cell["baseline_text_embedding"]["mean"] > prior, split


def test_prior_samples_that_ignore_their_seed_show_as_no_spread():
  for split, cell in _run(layout=True).items():  # different seeds, different renders: spread like real ones
    assert cell["cos_prior_vs_prior"]["mean"] < 0.97, split
  for split, cell in _run(layout=True, collapsed=True).items():
    assert cell["cos_prior_vs_prior"]["mean"] == pytest.approx(1.0), split
