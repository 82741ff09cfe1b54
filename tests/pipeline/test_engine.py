"""`Pipeline`: the whole call as one program equals the stages run one by one; Karlo's last upsampler step."""

from __future__ import annotations

import numpy as np
import pytest

from unclip_jax import images as image_io
from unclip_jax import pipeline as P
from unclip_jax.errors import UserError
from unclip_jax.pipeline import candidates


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


@pytest.mark.slow
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
  twice = pipe.generate(prompts * 2, seeds * 2, settings, batch=4)  # 2 batches of 4 rows on 4 of the 8 devices
  assert [(t["rows"], t["compile_s"]) for t in pipe.timings] == [(4, 0.0), (4, 0.0)]  # the same program again
  np.testing.assert_array_equal(twice["images"][:4], twice["images"][4:])
  np.testing.assert_array_equal(twice["images"][:4], r["images"])

  keys = P.image_keys(seeds)
  text = pipe.encode_text(prompts, rows=8)
  emb = pipe.sample_prior(text, keys, settings["prior"], rows=8)
  small = pipe.decode(emb, text, keys, settings["decoder"], rows=8)
  big = image_io.to_uint8(pipe.upsample(small, keys, settings, rows=8))
  np.testing.assert_allclose(r["image_embeds"], emb, atol=1e-5)
  np.testing.assert_allclose(r["small"], small, atol=1e-4)
  assert np.abs(r["images"].astype(int) - big).max() <= 1


def _candidate_scores(cands, prompts, pipe, clip, config, params) -> np.ndarray:
  """Each candidate rated outside the program: the cosine of its image embedding by `clip`'s image tower (on
  [0, 1] pixels at the tower's size) with the caption's embedding by the same CLIP's text tower: (B, K)."""
  import jax

  from unclip_jax.models import clip_encoder

  b, k = cands.shape[:2]
  encode = jax.jit(clip_encoder.image_encoder(clip, config))
  flat = P.upsample_bicubic(cands.reshape((-1,) + cands.shape[2:]), config.image_size)
  z = np.asarray(encode(params, (np.asarray(flat) + 1) / 2)).reshape(b, k, -1)
  t = np.asarray(clip_encoder.text_encoder(clip)(params, pipe.tokenize(prompts))[0])
  z, t = (a / np.linalg.norm(a, axis=-1, keepdims=True) for a in (z, t))
  return np.einsum("bke,be->bk", z, t)


@pytest.mark.slow
def test_decoder_candidates_keep_the_one_clip_rates_nearest_the_caption(pipe_dir):
  """CLIP reranking: with decoder candidates K, each image is drawn K times (candidate 0 is the image drawn
  without candidates) and the one whose CLIP image embedding has the largest cosine with the caption's text
  embedding is kept; the prior is untouched."""
  pipe = P.Pipeline.load(pipe_dir, log=lambda m: None)
  plain = pipe.settings()
  k = 3
  ranked = pipe.settings({"decoder": {"candidates": k}})
  assert ranked["decoder"].candidates == k and ranked["prior"] == plain["prior"]
  prompts, seeds = ["a red square", "a blue circle", "a cat"], [5, 6, 7]
  one = pipe.generate(prompts, seeds, plain)
  best = pipe.generate(prompts, seeds, ranked)
  np.testing.assert_array_equal(best["image_embeds"], one["image_embeds"])

  drawn = candidates.draw(pipe, prompts, seeds, ranked, k)
  np.testing.assert_allclose(drawn["image_embeds"], one["image_embeds"], atol=1e-5)
  cands = drawn["small"]
  np.testing.assert_allclose(cands[:, 0], one["small"], atol=1e-4)
  scores = _candidate_scores(cands, prompts, pipe, pipe.clip, pipe.clip_config, pipe.clip_params)
  np.testing.assert_allclose(candidates.Rater.of_pipeline(pipe).scores(cands, prompts, rows=2), scores, atol=1e-5)
  assert np.all(np.sort(scores, axis=1)[:, -1] - np.sort(scores, axis=1)[:, -2] > 1e-4)  # no near-ties
  want = cands[np.arange(len(prompts)), scores.argmax(1)]
  np.testing.assert_allclose(best["small"], want, atol=1e-4)
  assert not np.allclose(best["small"], one["small"], atol=1e-3)  # some image changed: the test can fail


def _with_reranker(pipe_dir, out, clip_config: dict, seed: int = 1):
  """pipe_dir's stages plus a `rerank_clip` stage of random weights (another seed than the pipeline's CLIP)."""
  import json

  from unclip_jax.checkpoint import save_stage

  save_stage(out / "rerank", P.random_params("rerank_clip", "clip", clip_config, seed), kind="clip",
             config=clip_config)
  meta = json.loads((pipe_dir / "pipeline.json").read_text())
  stages = {n: str(pipe_dir / rel) for n, rel in meta["stages"].items()}
  return P.assemble(out / "pipe", {**stages, "rerank_clip": str(out / "rerank")}, sampling=meta["sampling"])


@pytest.mark.slow
def test_a_rerank_clip_stage_rates_the_decoder_candidates_in_place_of_the_pipeline_clip(pipe_dir, tmp_path):
  """With a `rerank_clip` stage, `generate` keeps the candidate that CLIP's image tower puts nearest the
  caption's embedding by its own text tower; the prior and the candidates drawn are the pipeline's own."""
  base = P.Pipeline.load(pipe_dir, log=lambda m: None)
  pipe = P.Pipeline.load(_with_reranker(pipe_dir, tmp_path, P.read_pipeline(pipe_dir)["stages"]["clip"]["config"]),
                         log=lambda m: None)
  assert pipe.weights["rerank_clip"] == "params"
  k = 3
  ranked = pipe.settings({"decoder": {"candidates": k}})
  prompts, seeds = ["a red square", "a blue circle", "a cat", "a green dog", "two cats", "a sun"], [5, 6, 7, 8, 9, 10]
  best = pipe.generate(prompts, seeds, ranked)
  by_pipeline_clip = base.generate(prompts, seeds, ranked)
  np.testing.assert_array_equal(best["image_embeds"], by_pipeline_clip["image_embeds"])

  cands = candidates.draw(pipe, prompts, seeds, ranked, k)["small"]
  rerank = _candidate_scores(cands, prompts, pipe, pipe.rerank_clip, pipe.rerank_config, pipe.rerank_params)
  own = _candidate_scores(cands, prompts, pipe, pipe.clip, pipe.clip_config, pipe.clip_params)
  for rater, want in ((candidates.Rater.of_pipeline(pipe), rerank), (candidates.Rater.of_pipeline(pipe, True), own)):
    np.testing.assert_allclose(rater.scores(cands, prompts), want, atol=1e-5)
  assert np.all(np.diff(np.sort(rerank, axis=1)[:, -2:], axis=1) > 1e-4)  # no near-ties
  rows = np.arange(len(prompts))
  np.testing.assert_allclose(best["small"], cands[rows, rerank.argmax(1)], atol=1e-4)
  np.testing.assert_allclose(by_pipeline_clip["small"], cands[rows, own.argmax(1)], atol=1e-4)
  assert (rerank.argmax(1) != own.argmax(1)).any()  # the two CLIPs disagree somewhere: the test can fail

  # rated against an image embedding (variations without a caption), the pipeline's CLIP rates: the reranker's
  # embeddings live in another space
  emb = best["image_embeds"][:2]
  np.testing.assert_array_equal(pipe.decode_embeddings(emb, seeds[:2], ranked)["small"],
                                base.decode_embeddings(emb, seeds[:2], ranked)["small"])


def test_a_rerank_clip_stage_must_see_images_and_read_the_pipeline_context(pipe_dir, tmp_path):
  clip_config = P.read_pipeline(pipe_dir)["stages"]["clip"]["config"]
  for i, (change, message) in enumerate([({"image_tower": False}, "text encoder only"),
                                         ({"context_length": clip_config["context_length"] + 4}, "tokens")]):
    folder = _with_reranker(pipe_dir, tmp_path / str(i), {**clip_config, **change})
    with pytest.raises(UserError, match=message):
      P.Pipeline.load(folder, log=lambda m: None)


@pytest.mark.slow
def test_one_image_spreads_its_decoder_candidates_over_the_devices(pipe_dir):
  """A single image with decoder candidates runs on every device, its candidates divided among them, and
  draws what it draws in a batch (one row per device there, nothing spread)."""
  pipe = P.Pipeline.load(pipe_dir, log=lambda m: None)
  ranked = pipe.settings({"decoder": {"candidates": 3}})
  alone = pipe.generate(["a blue circle"], [6], ranked)
  batch = pipe.generate(["a red square", "a blue circle"] * 4, [5, 6] * 4, ranked)
  assert [(t["rows"], t["spread"]) for t in pipe.timings] == [(1, True), (8, False)]
  np.testing.assert_allclose(alone["small"][0], batch["small"][1], atol=1e-4)
  assert np.abs(alone["images"][0].astype(int) - batch["images"][1]).max() <= 1
  pipe.timings = []
  pipe.generate(["a blue circle"], [6], pipe.settings())  # one candidate: nothing to spread
  assert [(t["rows"], t["spread"]) for t in pipe.timings] == [(1, False)]


def test_decoder_candidates_without_an_image_tower_or_for_an_upsampler_are_one_error(pipe_dir):
  import dataclasses

  import pytest

  from unclip_jax.errors import UserError

  pipe = P.Pipeline.load(pipe_dir, log=lambda m: None)
  with pytest.raises(UserError, match="sr_64_256: only the prior and the decoder"):
    pipe.settings({"sr_64_256": {"candidates": 2}})
  with pytest.raises(UserError, match="decoder candidates must lie between 1 and 64"):
    pipe.settings({"decoder": {"candidates": 65}})
  pipe.clip_config = dataclasses.replace(pipe.clip_config, image_tower=False)
  with pytest.raises(UserError, match="text encoder only; decoder candidates"):
    pipe.generate(["a red square"], [0], pipe.settings({"decoder": {"candidates": 2}}))


@pytest.mark.slow
def test_a_bfloat16_pipeline_holds_its_kernels_in_bfloat16_and_draws_what_float32_kernels_draw():
  import dataclasses

  import jax

  pipe = P.Pipeline.random("tiny", seed=1, dtype="bfloat16", log=lambda m: None)
  trees = {"clip": pipe.clip_params, "prior": pipe.prior_vars, "decoder": pipe.decoder_params,
           "sr": [(s.params, s.last_params) for s in pipe.srs]}
  for name, tree in trees.items():
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    kernels = {str(leaf.dtype) for path, leaf in leaves if getattr(path[-1], "key", None) == "kernel"}
    others = {str(leaf.dtype) for path, leaf in leaves if getattr(path[-1], "key", None) != "kernel"}
    assert kernels == {"bfloat16"}, name
    assert "float32" in others and "bfloat16" not in others, name  # norms, biases, embeddings, prior stats
  f32 = P.Pipeline.random("tiny", seed=1, log=lambda m: None)
  assert {str(x.dtype) for x in jax.tree.leaves(f32.decoder_params)} == {"float32"}
  # the same pipeline, its weights swapped for the float32 ones: the layers cast them, with the same result
  ref = P.Pipeline.random("tiny", seed=1, dtype="bfloat16", log=lambda m: None)
  ref.clip_params, ref.prior_vars, ref.decoder_params = f32.clip_params, f32.prior_vars, f32.decoder_params
  ref.srs = [dataclasses.replace(s, params=o.params, last_params=o.last_params) for s, o in zip(ref.srs, f32.srs)]
  args = (["a red circle above a blue square", "two green triangles"], [0, 1])
  a, b = pipe.generate(*args, pipe.settings()), ref.generate(*args, ref.settings())
  np.testing.assert_array_equal(a["image_embeds"], b["image_embeds"])
  np.testing.assert_array_equal(a["small"], b["small"])
  # the upsampler's fusions differ with the kernels' dtype: bf16 rounding, a level or two of 255
  assert np.abs(a["images"].astype(int) - b["images"].astype(int)).mean() < 2


@pytest.mark.slow
def test_rate_upsampled_keeps_the_candidate_rated_best_at_the_output_size(pipe_dir, tmp_path):
  """With `rate_upsampled` every decoder candidate goes through the upsamplers with its image's key and the
  rater (here a `rerank_clip` at the output size, as the demo's) rates those output images: `generate` keeps
  the one it puts nearest the caption, and its output is that candidate's upsampled image. One image alone
  spreads the candidates' upsampling over the devices and draws what it draws in a batch."""
  clip_config = P.read_pipeline(pipe_dir)["stages"]["clip"]["config"]
  pipe = P.Pipeline.load(_with_reranker(pipe_dir, tmp_path, {**clip_config, "image_size": 64}), log=lambda m: None)
  assert pipe.output_size == 64 and pipe.image_size < 64
  k = 3
  late = pipe.settings({"decoder": {"candidates": k, "rate_upsampled": True}})
  early = pipe.settings({"decoder": {"candidates": k}})
  prompts, seeds = ["a red square", "a blue circle", "a cat", "a green dog", "two cats", "a sun"], [5, 6, 7, 8, 9, 10]
  best = pipe.generate(prompts, seeds, late)
  drawn = candidates.draw(pipe, prompts, seeds, late, k)
  output = candidates.upsample(pipe, drawn["small"], drawn["keys"], late)
  rater = candidates.Rater.of_pipeline(pipe)
  scores = rater.scores(output, prompts)
  assert np.all(np.diff(np.sort(scores, axis=1)[:, -2:], axis=1) > 1e-4)  # no near-ties
  rows, pick = np.arange(len(prompts)), scores.argmax(1)
  np.testing.assert_allclose(best["small"], drawn["small"][rows, pick], atol=1e-4)
  assert np.abs(best["images"].astype(int) - image_io.to_uint8(output[rows, pick])).max() <= 1
  assert (pick != rater.scores(drawn["small"], prompts).argmax(1)).any()  # rating the small ones differs somewhere
  np.testing.assert_allclose(pipe.generate(prompts, seeds, early)["small"],
                             drawn["small"][rows, rater.scores(drawn["small"], prompts).argmax(1)], atol=1e-4)

  pipe.timings = []
  alone = pipe.generate([prompts[1]], [seeds[1]], late)
  assert [(t["rows"], t["spread"]) for t in pipe.timings] == [(1, True)]
  np.testing.assert_allclose(alone["small"][0], best["small"][1], atol=1e-4)
  assert np.abs(alone["images"][0].astype(int) - best["images"][1]).max() <= 1


def test_rate_upsampled_is_a_decoder_flag(pipe_dir):
  pipe = P.Pipeline.load(pipe_dir, log=lambda m: None)
  assert pipe.settings()["decoder"].rate_upsampled is False
  assert pipe.settings({"decoder": {"rate_upsampled": True}})["decoder"].rate_upsampled is True
  with pytest.raises(UserError, match="prior: only the decoder's candidates are rated after upsampling"):
    pipe.settings({"prior": {"rate_upsampled": True}})
  with pytest.raises(UserError, match="decoder rate_upsampled must be true or false, got 'yes'"):
    pipe.settings({"decoder": {"rate_upsampled": "yes"}})
  assert P.StageSampling.from_dict({"candidates": 8, "rate_upsampled": True}).compiled_key() != \
      P.StageSampling.from_dict({"candidates": 8}).compiled_key()  # another compiled program
