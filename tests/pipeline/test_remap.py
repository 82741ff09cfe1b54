"""`pipeline remap`: a decoder's CLIP input layers refit for a retrained CLIP."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unclip_jax import pipeline as P
from unclip_jax.checkpoint import load_stage_params, read_stage
from unclip_jax.errors import run_cli
from unclip_jax.models import registry
from unclip_jax.pipeline import remap
from unclip_jax.pipeline.__main__ import main as pipeline_main


def test_affine_fit_recovers_an_exact_map_and_scores_noise_low():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(200, 5))
  a, c = rng.normal(size=(5, 3)), rng.normal(size=3)
  fa, fc, r2 = remap.affine_fit(x, x @ a + c, ridge=0.0)
  np.testing.assert_allclose(fa, a, atol=1e-9)
  np.testing.assert_allclose(fc, c, atol=1e-9)
  assert r2 == pytest.approx(1.0)
  assert remap.affine_fit(x, rng.normal(size=(200, 3)))[2] < 0.1


def test_affine_fit_keeps_weights_small_where_the_inputs_span_fewer_directions_than_their_width():
  """A CLIP's text outputs do (few captions): plain least squares then put weights of 1e5 on the empty
  directions (inf once stored as float16); the ridge keeps the fit and bounded weights."""
  rng = np.random.default_rng(0)
  basis = rng.normal(size=(3, 8))
  x = rng.normal(size=(500, 3)) @ basis + 1e-7 * rng.normal(size=(500, 8))  # rank 3 in 8 dimensions
  y = x @ rng.normal(size=(8, 4)) + 1e-3 * rng.normal(size=(500, 4))
  plain = remap.affine_fit(x, y, ridge=0.0)
  fa, _, r2 = remap.affine_fit(x, y)
  assert np.abs(plain[0]).max() > 100  # the failure the ridge is for (the test can fail)
  assert np.abs(fa).max() < 10 and r2 > 0.999


def test_remapped_decoder_on_new_outputs_equals_the_old_decoder_on_old_ones():
  """When the old CLIP's outputs are an affine function of the new one's, the remapped decoder computes
  exactly what the old one did, on both guidance branches (the no-image embedding is moved too)."""
  kind, config = P.random_stage_configs("tiny")["decoder"]
  m = registry.model_dict(kind, config)
  model = registry.build_model(kind, m)
  params = P.random_params("decoder", kind, config, 0)
  rng = np.random.default_rng(1)
  d, w = m["clip_embeddings_dim"], P.random_stage_configs("tiny")["clip"][1]["text_width"]
  params = jax.tree.map(np.asarray, params)
  params["text_proj"][remap.NO_IMAGE] = rng.normal(size=d).astype(np.float32)  # zeros at init: make it matter
  b, length = 4, 6
  new = {"image_embedding": rng.normal(size=(b, d)), "text_embedding": rng.normal(size=(b, d)),
         "text_states": rng.normal(size=(b, length, w))}
  maps, old = {}, {}
  for name, x in new.items():
    width = x.shape[-1]
    a = np.linalg.qr(rng.normal(size=(width, width)))[0] * 1.5 + 0.1 * rng.normal(size=(width, width))
    c = rng.normal(size=width)
    maps[name], old[name] = (a, c), x @ a + c
  remapped = {**params, "text_proj": remap.remap_text_proj(params["text_proj"], maps, ridge=0.0)}
  size = m["image_size"]
  x_t = jnp.asarray(rng.normal(size=(b, size, size, 3)), jnp.float32)
  t = jnp.asarray([10, 200, 500, 900])
  dropped = jnp.asarray([False, True, False, True])

  def run(p, inputs):
    f32 = {k: jnp.asarray(v, jnp.float32) for k, v in inputs.items()}
    return model.apply({"params": p}, x_t, t, f32["image_embedding"], f32["text_embedding"], f32["text_states"],
                       image_dropped=dropped)
  reference, moved = run(params, old), run(remapped, new)
  np.testing.assert_allclose(moved, reference, atol=2e-3 * float(jnp.abs(reference).max()))
  assert not np.allclose(run(params, new), reference, atol=0.1)  # the unmapped decoder differs: the test can fail


def test_remap_cli_writes_a_loadable_decoder_and_refuses_bad_input(pipe_dir, tmp_path, capsys):
  from unclip_jax.data import prepare

  builder = prepare.prepare_shapes(str(tmp_path / "data"), image_size=32, train_size=64, heldout_size=4)
  common = ["--data_dir", str(tmp_path / "data"), "--dataset", "shapes",
            "--dataset_config", builder.builder_config.name, "--num", "64"]
  out = tmp_path / "remapped"
  with pytest.raises(SystemExit) as e:  # the same CLIP on both sides: the identity map, the same decoder
    run_cli(pipeline_main, ["remap", "--decoder", str(pipe_dir / "decoder"), "--old-clip", str(pipe_dir / "clip"),
                            "--new-clip", str(pipe_dir / "clip"), *common, "--out", str(out)])
  assert e.value.code == 0
  assert "image_embedding 1.000" in capsys.readouterr().out
  meta = read_stage(out, kind="decoder")
  assert meta["remap"]["r2"]["text_states"] == pytest.approx(1.0, abs=1e-3) and meta["remap"]["fit"]["num"] == 64
  model_config = registry.model_dict("decoder", meta["config"])
  abstract = registry.abstract_params("decoder", model_config)
  before, after = load_stage_params(pipe_dir / "decoder", abstract), load_stage_params(out, abstract)
  for x, y in zip(jax.tree.leaves(before["unet"]), jax.tree.leaves(after["unet"])):
    np.testing.assert_array_equal(y, x)
  # On the CLIP's own outputs the remapped conditioning is the original one (the ridge shrinks only the
  # directions those outputs do not use).
  images, captions = remap._scenes(str(tmp_path / "data"), "shapes", builder.builder_config.name, "train", 64)
  outputs = remap.clip_outputs(pipe_dir / "clip", images, captions)
  text_proj = registry.build_model("decoder", model_config).text_proj
  states = outputs["text_states"][:8][None]  # eight real tokens as one caption
  dropped = jnp.asarray([False, True])
  args = (outputs["image_embedding"][:2], outputs["text_embedding"][:2], np.concatenate([states, states]), dropped)
  want = text_proj.apply({"params": before["text_proj"]}, *args)
  got = text_proj.apply({"params": after["text_proj"]}, *args)
  for w, g in zip(want, got):
    np.testing.assert_allclose(g, w, atol=0.02 * float(np.abs(w).max()))

  with pytest.raises(SystemExit) as e:  # a decoder where a CLIP belongs: one line, nothing written
    run_cli(pipeline_main, ["remap", "--decoder", str(pipe_dir / "decoder"), "--old-clip", str(pipe_dir / "decoder"),
                            "--new-clip", str(pipe_dir / "clip"), *common, "--out", str(tmp_path / "bad")])
  err = capsys.readouterr().err
  assert e.value.code == 2 and "a clip checkpoint is needed" in err and "Traceback" not in err
  assert not (tmp_path / "bad").exists()
  with pytest.raises(SystemExit) as e:
    run_cli(pipeline_main, ["remap", "--decoder", str(pipe_dir / "decoder"), "--old-clip", str(pipe_dir / "clip"),
                            "--new-clip", str(pipe_dir / "clip"), *common[:-1], "1", "--out", str(tmp_path / "bad")])
  assert e.value.code == 2 and "--num must be at least 2" in capsys.readouterr().err
  assert not (tmp_path / "bad").exists()
