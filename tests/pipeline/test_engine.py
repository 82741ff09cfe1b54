"""`Pipeline`: the whole call as one program equals the stages run one by one; Karlo's last upsampler step."""

from __future__ import annotations

import numpy as np

from unclip_jax import images as image_io
from unclip_jax import pipeline as P


def test_last_upsampler_step_uses_the_last_model():
  """Karlo: every SR step but the last uses sr_64_256, the last one sr_64_256_last."""
  import dataclasses

  import jax

  pipe = P.Pipeline.random("tiny", seed=3, log=lambda m: None)
  sr = pipe.srs[0]
  first, last = sr.params, sr.last_params
  assert last is not None
  low = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
  keys = P.image_keys([0, 1])
  one = {"sr_64_256": dataclasses.replace(pipe.settings()["sr_64_256"], steps="1")}
  with_last = pipe.upsample(low, keys, one)
  sr.params, sr.last_params = last, None
  only_last = pipe.upsample(low, keys, one)
  sr.params = first
  only_first = pipe.upsample(low, keys, one)
  assert with_last.shape == (2, 64, 64, 3)
  np.testing.assert_array_equal(with_last, only_last)  # a single step is the last step
  assert np.abs(with_last - only_first).max() > 1e-3
  assert jax.tree.structure(first) == jax.tree.structure(last)


def test_one_program_per_call_equals_the_stages_run_one_by_one(pipe_dir):
  """generate() compiles text encoder, prior, decoder and upsampler into one program, reused per batch,
  and draws what the stage programs draw when run one after another on the same keys."""
  pipe = P.Pipeline.load(pipe_dir, log=lambda m: None)
  settings = pipe.settings()
  prompts, seeds = ["a red square", "a blue circle", "a cat", "a dog"], [1, 2, 3, 4]
  r = pipe.generate(prompts, seeds, settings, batch=8)
  assert [t["stage"] for t in pipe.timings] == ["text → prior 4 → decoder 4 → sr_64_256 3"]
  assert pipe.timings[0]["compile_s"] > 0
  pipe.timings = []
  twice = pipe.generate(prompts[:2] * 2, seeds[:2] * 2, settings, batch=2)  # 2 batches padded to 8 rows
  assert [(t["rows"], t["compile_s"]) for t in pipe.timings] == [(8, 0.0), (8, 0.0)]  # the same program again
  np.testing.assert_array_equal(twice["images"][:2], twice["images"][2:])

  keys = P.image_keys(seeds)
  text = pipe.encode_text(prompts, rows=8)
  emb = pipe.sample_prior(text, keys, settings["prior"], rows=8)
  small = pipe.decode(emb, text, keys, settings["decoder"], rows=8)
  big = image_io.to_uint8(pipe.upsample(small, keys, settings, rows=8))
  np.testing.assert_allclose(r["image_embeds"], emb, atol=1e-5)
  np.testing.assert_allclose(r["small"], small, atol=1e-4)
  assert np.abs(r["images"].astype(int) - big).max() <= 1
