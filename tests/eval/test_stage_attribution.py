"""The stages suite feeds each stage the true input of the caption it grades: with a stand-in pipeline whose
decoder and upsampler draw perfectly from exactly those inputs (lookup tables of the real renders), both
rows read 1.0; a stage that draws nothing reads 0.0; missing stages are reported as skipped."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from unclip_jax.eval import prompts, stage_attribution
from unclip_jax.eval.context import Context, Options


class PerfectStages:
  """Knows the real 64 px render of every 32 px render of the evaluation's single-object scenes."""

  def __init__(self, options: Options, *, image_tower=True, upsampler=True, blank_upsampler=False):
    self.clip_config = SimpleNamespace(image_tower=image_tower, image_size=32)
    self.image_size = 32
    self.srs = ["sr_64_256"] if upsampler else []
    self.blank_upsampler = blank_upsampler
    self.table = {}
    for split in prompts.SPLITS:
      captions, big, _ = prompts.task_set("single", split, options.num, options.seed)
      _, small, _ = prompts.task_set("single", split, options.num, options.seed, image_size=32)
      self.table.update({s.tobytes(): (c, b) for s, c, b in zip(small, captions, big)})

  def settings(self, overrides=None):
    return {}

  def encode_images(self, images, batch=None):  # the "embedding" is the image itself
    return np.asarray(images, np.float32).reshape(len(images), -1)

  def decode_embeddings(self, embeds, seeds, settings, *, prompts, batch):
    assert len(embeds) == len(seeds) == len(prompts)
    found = [self.table[e.astype(np.uint8).tobytes()] for e in embeds]
    assert [c for c, _ in found] == list(prompts), "the decoder got another scene's caption"
    return {"images": np.stack([b for _, b in found])}

  def upsample(self, images, keys, settings):
    if self.blank_upsampler:
      return -np.ones((len(images), 64, 64, 3), np.float32)
    small = np.round((images + 1) * 127.5).astype(np.uint8)
    return np.stack([self.table[s.tobytes()][1] for s in small]).astype(np.float32) / 127.5 - 1


def _run(**kwargs):
  options = Options(num=6, batch=4, seed=2)
  return stage_attribution.run(Context(PerfectStages(options, **kwargs), options, log=lambda m: None))


def test_each_stage_gets_its_captions_true_input():
  results = _run()
  for split in prompts.SPLITS:
    cell = results["splits"][split]
    for row in ("real_ceiling", "decoder_from_true_embedding", "upsampler_from_true_image"):
      assert cell[row]["rate"] == 1.0 and cell[row]["n"] == 6, (split, row)
  assert set(results["_grids"]) == {f"{row}_{split}" for row in ("decoder_from_true_embedding",
                                                                  "upsampler_from_true_image")
                                    for split in prompts.SPLITS}


def test_a_stage_that_draws_nothing_scores_zero_and_missing_stages_are_skipped():
  blank = _run(blank_upsampler=True)
  assert all(blank["splits"][s]["upsampler_from_true_image"]["rate"] == 0.0 for s in prompts.SPLITS)
  assert all(blank["splits"][s]["decoder_from_true_embedding"]["rate"] == 1.0 for s in prompts.SPLITS)
  bare = _run(image_tower=False, upsampler=False)
  assert set(bare["skipped"]) == {"decoder_from_true_embedding", "upsampler_from_true_image"}
  assert set(bare["splits"]["seen"]) == {"real_ceiling"}
