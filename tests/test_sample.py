"""`python -m unclip_jax.sample` and `unclip_jax.pipeline` end to end on a tiny random-weight pipeline.

The pipeline folder is written once per module; the CLI runs in-process (its pipeline cache keeps the
compiled stage programs between calls), except one subprocess run that checks the bare error line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unclip_jax import pipeline as P
from unclip_jax import sample
from unclip_jax.errors import run_cli


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory):
  return P.make_random_pipeline(tmp_path_factory.mktemp("pipe") / "tiny", "tiny", seed=0)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
  d = tmp_path_factory.mktemp("img")
  rng = np.random.default_rng(0)
  Image.fromarray((rng.random((40, 50, 3)) * 255).astype(np.uint8)).save(d / "a.png")
  Image.fromarray((rng.random((30, 30, 3)) * 255).astype(np.uint8)).save(d / "b.jpg")
  (d / "not_an_image.png").write_text("hello")
  return d


def cli(argv, capsys):
  """Runs the CLI in-process: (exit code, stdout, stderr)."""
  with pytest.raises(SystemExit) as e:
    run_cli(sample.main, [str(a) for a in argv])
  out = capsys.readouterr()
  return e.value.code, out.out, out.err


def png(path: Path) -> np.ndarray:
  with Image.open(path) as im:
    assert im.format == "PNG"
    return np.asarray(im.convert("RGB"))


def test_text_to_image_writes_pngs_sidecars_grid_and_reproduces(pipe_dir, tmp_path, capsys):
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("a blue circle\n\n")
  out = tmp_path / "out"
  code, _, err = cli(["--checkpoint", pipe_dir, "--prompt", "a red square", "--prompts-file", prompts,
                      "--num", 2, "--seed", 10, "--out", out], capsys)
  assert code == 0, err
  # one program for text encoder, prior, decoder and upsampler, its compile time reported apart from sampling
  assert "text → prior 4 → decoder 4 → sr_64_256 3: 8 rows, compile" in err
  assert "4 image(s): compile" in err and "sampling" in err
  assert sorted(p.name for p in out.glob("*.png")) == ["0000.png", "0001.png", "0002.png", "0003.png", "grid.png"]
  imgs = [png(out / f"000{i}.png") for i in range(4)]
  assert all(im.shape == (64, 64, 3) for im in imgs)  # tiny decoder 16 px → 4x upsampler
  assert imgs[0].std() > 1  # not a constant image
  assert png(out / "grid.png").shape == (2 * 64 + 3 * 2, 2 * 64 + 3 * 2, 3)  # 2 prompts × 2 images
  rec = json.loads((out / "0003.json").read_text())
  assert (rec["prompt"], rec["seed"], rec["steps"]["prior"], rec["guidance"]["decoder"]) == ("a blue circle", 13,
                                                                                             "4", 8.0)
  assert rec["weights"]["decoder"] == "params" and rec["ema"] is True  # no EMA in the checkpoint: said so
  assert "no EMA weights" in err

  again = tmp_path / "again"
  code, _, err = cli(["--from-sidecar", out / "0003.json", "--out", again], capsys)
  assert code == 0, err
  np.testing.assert_array_equal(png(again / "0003.png"), imgs[3])
  assert not np.array_equal(imgs[2], imgs[3])


def test_same_seed_same_image_different_seed_different(pipe_dir):
  pipe = sample._CACHE and next(iter(sample._CACHE.values())) or P.Pipeline.load(pipe_dir, log=lambda m: None)
  r = pipe.generate(["a cat", "a cat", "a cat"], [5, 5, 6], pipe.settings())
  assert r["images"].dtype == np.uint8 and r["images"].shape == (3, 64, 64, 3)
  np.testing.assert_array_equal(r["images"][0], r["images"][1])
  assert np.abs(r["images"][0].astype(int) - r["images"][2]).mean() > 1
  assert np.all(np.isfinite(r["image_embeds"]))


def test_variations(pipe_dir, images, tmp_path, capsys):
  out = tmp_path / "var"
  code, _, err = cli(["variations", images / "a.png", "--num", 3, "--checkpoint", pipe_dir, "--out", out], capsys)
  assert code == 0, err
  ims = [png(out / f"000{i}.png") for i in range(3)]
  assert ims[0].shape == (64, 64, 3) and not np.array_equal(ims[0], ims[1])  # one seed each
  assert json.loads((out / "0002.json").read_text())["mode"] == "variations"
  assert (out / "grid.png").is_file()


def test_interpolate_endpoints_decode_from_endpoint_embeddings(pipe_dir, images, tmp_path, capsys, monkeypatch):
  from unclip_jax.zeroshot import load_image

  cli(["variations", images / "a.png", "--num", 1, "--checkpoint", pipe_dir, "--out", tmp_path / "warm"], capsys)
  pipe = next(iter(sample._CACHE.values()))
  seen = []
  decode = pipe.decode_embeddings
  monkeypatch.setattr(pipe, "decode_embeddings",
                      lambda emb, *a, **k: (seen.append(np.array(emb)), decode(emb, *a, **k))[1])
  out = tmp_path / "interp"
  code, _, err = cli(["interpolate", images / "a.png", images / "b.jpg", "--frames", 4, "--interp-noise",
                      "--checkpoint", pipe_dir, "--out", out], capsys)
  assert code == 0, err
  size = pipe.clip_config.image_size
  ends = pipe.encode_images(np.stack([load_image(images / "a.png", size), load_image(images / "b.jpg", size)]))
  (embeds,) = seen
  assert embeds.shape[0] == 4
  np.testing.assert_array_equal(embeds[0], ends[0])
  np.testing.assert_array_equal(embeds[-1], ends[1])
  assert not np.allclose(embeds[1], ends[0]) and not np.allclose(embeds[1], ends[1])
  assert png(out / "grid.png").shape[1] == 4 * 64 + 5 * 2  # one row of 4
  assert [json.loads((out / f"000{i}.json").read_text())["fraction"] for i in (0, 3)] == [0.0, 1.0]


def test_textdiff_with_trajectory(pipe_dir, images, tmp_path, capsys):
  out = tmp_path / "diff"
  code, _, err = cli(["textdiff", images / "a.png", "--from", "a photo of a cat", "--to", "a drawing of a cat",
                      "--strengths", "0,0.5", "--trajectory", "--checkpoint", pipe_dir, "--out", out], capsys)
  assert code == 0, err
  assert png(out / "0001.png").shape == (64, 64, 3)
  strip = png(out / "0000_trajectory.png")
  assert strip.shape == (64, 4 * 64, 3)  # 4 decoder steps, each shown at the output size
  with Image.open(out / "0000_trajectory.gif") as gif:
    assert gif.format == "GIF" and gif.n_frames == 4
  assert json.loads((out / "0001.json").read_text())["strength"] == 0.5


def test_textdiff_and_slerp_math():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(2, 8)).astype(np.float32)
  np.testing.assert_array_equal(P.slerp(a, b, 0.0), a)
  np.testing.assert_array_equal(P.slerp(a, b, 1.0), b)
  mid = P.slerp(a, b, 0.5)
  assert np.isclose(np.linalg.norm(mid), (np.linalg.norm(a) + np.linalg.norm(b)) / 2, rtol=1e-5)
  ua, ub, um = (v / np.linalg.norm(v) for v in (a, b, mid))
  assert np.isclose(um @ ua, um @ ub, atol=1e-5)  # halfway along the great circle
  z = sample.textdiff_embeddings(a, b, b + 2 * a, [0.0, 1.0])
  np.testing.assert_array_equal(z[0], a)
  np.testing.assert_allclose(z[1], a / np.linalg.norm(a) * np.linalg.norm(a), rtol=1e-5)  # direction of +a
  with pytest.raises(ValueError, match="same text embedding"):
    sample.textdiff_embeddings(a, b, b, [0.5])


def test_bicubic_matches_diffusers_interpolate():
  """The SR conditioning image: F.interpolate(bicubic, align_corners=False, antialias=True)."""
  torch = pytest.importorskip("torch")
  x = np.random.default_rng(0).normal(size=(2, 5, 5, 3)).astype(np.float32)
  ours = np.asarray(P.upsample_bicubic(x, 20))
  ref = torch.nn.functional.interpolate(torch.tensor(x.transpose(0, 3, 1, 2)), size=[20, 20], mode="bicubic",
                                        align_corners=False, antialias=True).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(ours, ref, atol=1e-5)


@pytest.mark.parametrize("argv, message", [
    (["--prompt", ""], "prompt is empty"),
    (["--prompts-file", "{tmp}/missing.txt"], "prompts file"),
    (["--prompt", "x", "--prior-steps", "-3"], "--prior-steps must lie between 1 and 1000"),
    (["--prompt", "x", "--decoder-steps", "100000"], "--decoder-steps must lie between 1 and 1000"),
    (["--prompt", "x", "--sr-steps", "abc"], "--sr-steps must be a whole number"),
    (["--prompt", "x", "--decoder-guidance", "nan"], "--decoder-guidance must be a finite number"),
    (["--prompt", "x", "--prior-guidance", "inf"], "--prior-guidance must be a finite number"),
    (["--prompt", "x", "--num", "0"], "--num must lie between"),
    (["variations", "{img}/not_an_image.png"], "is not an image file"),
    (["variations", "{img}/nope.png"], "does not exist"),
    (["interpolate", "{img}/a.png", "{img}/b.jpg", "--frames", "1"], "--frames must lie between"),
    (["textdiff", "{img}/a.png", "--from", "a", "--to", "a", "--strengths", "0,2"], "--strengths must be"),
])
def test_bad_input_is_one_error_line_and_no_files(argv, message, pipe_dir, images, tmp_path, capsys):
  argv = [a.format(tmp=tmp_path, img=images) for a in argv]
  out = tmp_path / "out"
  code, stdout, err = cli(argv + ["--checkpoint", pipe_dir, "--out", out], capsys)
  assert code == 2
  assert err.startswith("error: ") and message in err and err.count("\n") == 1 and "Traceback" not in err
  assert not out.exists() or not any(out.iterdir())


def _copy_pipeline_json(pipe_dir: Path, dest: Path, **stages) -> Path:
  meta = json.loads((pipe_dir / P.PIPELINE_FILE).read_text())
  meta["stages"] = {k: str((pipe_dir / v).absolute()) for k, v in meta["stages"].items()}
  meta["stages"].update(stages)
  dest.mkdir()
  (dest / P.PIPELINE_FILE).write_text(json.dumps(meta))
  return dest


def test_bad_checkpoint_folders(pipe_dir, tmp_path, capsys):
  cases = [(tmp_path / "nowhere", "does not exist"), (pipe_dir / "prior", "not a pipeline folder"),
           (_copy_pipeline_json(pipe_dir, tmp_path / "wrong", prior=str(pipe_dir / "decoder")),
            "holds a decoder checkpoint, but a prior checkpoint is needed"),
           (_copy_pipeline_json(pipe_dir, tmp_path / "gone", sr_64_256=None), "sr_64_256")]
  for folder, message in cases:
    code, _, err = cli(["--checkpoint", folder, "--prompt", "x", "--out", tmp_path / "o"], capsys)
    assert code == 2 and message in err and err.count("\n") == 1, err
  assert not (tmp_path / "o").exists()


def test_cli_error_in_subprocess_has_no_traceback(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-m", "unclip_jax.sample", "--checkpoint", str(tmp_path / "none"),
                      "--prompt", "x", "--out", str(tmp_path / "o")], capture_output=True, text=True, env=env,
                     timeout=120)
  assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr
  assert not (tmp_path / "o").exists()


def test_assemble_writes_karlo_defaults(pipe_dir, tmp_path, capsys):
  from unclip_jax.pipeline import main as pipeline_main

  out = tmp_path / "assembled"
  stages = ["--clip", pipe_dir / "clip", "--prior", pipe_dir / "prior", "--decoder", pipe_dir / "decoder",
            "--sr-64-256", pipe_dir / "sr_64_256", "--sr-64-256-last", pipe_dir / "sr_64_256_last"]
  with pytest.raises(SystemExit) as e:
    run_cli(pipeline_main, ["assemble", *map(str, stages), "--out", str(out)])
  assert e.value.code == 0
  info = P.read_pipeline(out)
  s = info["sampling"]
  assert (s["prior"].steps, s["decoder"].steps, s["sr_64_256"].steps) == ("25", "25", "7")
  assert (s["prior"].guidance_scale, s["decoder"].guidance_scale) == (4.0, 8.0)
  assert set(info["paths"]) == {"clip", "prior", "decoder", "sr_64_256", "sr_64_256_last"}
  with pytest.raises(SystemExit) as e:  # a stage of the wrong kind is named
    run_cli(pipeline_main, ["assemble", "--clip", str(pipe_dir / "prior"), *map(str, stages[2:]),
                            "--out", str(tmp_path / "bad")])
  assert e.value.code == 2 and "a clip checkpoint is needed" in capsys.readouterr().err
  assert not (tmp_path / "bad").exists()


def test_ema_weights_are_used_when_present(tmp_path):
  from unclip_jax.checkpoint import read_stage, save_stage

  kind, config = P.random_stage_configs("tiny")["prior"]
  params, ema = P.random_params("prior", kind, config, 0), P.random_params("prior", kind, config, 1)
  save_stage(tmp_path / "with_ema", {"params": params, "ema": ema}, kind=kind, config=config, extra={"ema": True})
  save_stage(tmp_path / "plain", params, kind=kind, config=config)
  said = []
  meta = read_stage(tmp_path / "with_ema")
  for use_ema, want in ((True, ema), (False, params)):
    tree, which = P.load_stage_tree(tmp_path / "with_ema", kind, meta, ema=use_ema, log=said.append)
    assert which == ("ema" if use_ema else "params")
    np.testing.assert_array_equal(tree["params"]["prd_embedding"], want["params"]["prd_embedding"])
  assert not said
  tree, which = P.load_stage_tree(tmp_path / "plain", kind, read_stage(tmp_path / "plain"), ema=True,
                                  log=said.append)
  assert which == "params" and said == ["plain: no EMA weights in this checkpoint; using its params"]


def test_init_random_refuses_a_non_empty_folder(tmp_path, capsys):
  (tmp_path / "x").mkdir()
  (tmp_path / "x" / "keep.txt").write_text("mine")
  with pytest.raises(SystemExit) as e:
    run_cli(P.main, ["init-random", "--preset", "tiny", "--out", str(tmp_path / "x")])
  assert e.value.code == 2 and "not empty" in capsys.readouterr().err
  assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["keep.txt"]


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
  big = P.to_uint8(pipe.upsample(small, keys, settings, rows=8))
  np.testing.assert_allclose(r["image_embeds"], emb, atol=1e-5)
  np.testing.assert_allclose(r["small"], small, atol=1e-4)
  assert np.abs(r["images"].astype(int) - big).max() <= 1


def test_textdiff_and_interpolate_invert_decode_from_the_images_ddim_latents(pipe_dir, images, tmp_path, capsys,
                                                                             monkeypatch):
  """--invert: every strength of a text diff starts from the image's DDIM latent, and an interpolation row
  slerps between the two images' latents; the decoder then runs DDIM with eta 0 and no clamp."""
  from unclip_jax.zeroshot import load_image

  cli(["variations", images / "a.png", "--num", 1, "--checkpoint", pipe_dir, "--out", tmp_path / "warm"], capsys)
  pipe = next(iter(sample._CACHE.values()))
  seen = []
  decode = pipe.decode_embeddings
  monkeypatch.setattr(pipe, "decode_embeddings", lambda emb, seeds, settings, **k: (
      seen.append((np.array(emb), k["x_T"], settings["decoder"])), decode(emb, seeds, settings, **k))[1])
  out = tmp_path / "diff"
  code, _, err = cli(["textdiff", images / "a.png", "--from", "a photo", "--to", "a drawing", "--strengths", "0,1",
                      "--invert", "--checkpoint", pipe_dir, "--out", out], capsys)
  assert code == 0, err
  assert "inverting 1 image(s), decoder steps ddim4" in err
  emb, x_T, dec = seen.pop()
  # DDIM, eta 0, no clamp, and the even stride that avoids t = 999
  assert (dec.steps, dec.sampler, dec.eta, dec.clip_x0, dec.dynamic_threshold) == ("ddim4", "ddim", 0.0, 0.0, 0.0)
  size = pipe.image_size
  image = load_image(images / "a.png", size).astype(np.float32)[None] / 127.5 - 1
  latent = pipe.invert(image, emb[:1], dec)
  np.testing.assert_array_equal(x_T, np.repeat(latent, 2, axis=0))
  assert not np.allclose(latent, pipe.decoder_noise(P.image_keys([0])), atol=0.1)  # not the seed's noise
  rec = json.loads((out / "0001.json").read_text())
  assert rec["inverted"] is True and rec["settings"]["decoder"]["sampler"] == "ddim"
  assert rec["settings"]["decoder"]["steps"] == "ddim4"

  code, _, err = cli(["interpolate", images / "a.png", images / "b.jpg", "--frames", 3, "--invert",
                      "--checkpoint", pipe_dir, "--out", tmp_path / "interp"], capsys)
  assert code == 0, err
  emb, x_T, dec = seen.pop()
  ends = np.stack([load_image(images / n, size) for n in ("a.png", "b.jpg")]).astype(np.float32) / 127.5 - 1
  latents = pipe.invert(ends, emb[[0, -1]], dec)
  np.testing.assert_allclose(x_T[[0, -1]], latents, atol=1e-6)
  assert not np.allclose(x_T[1], latents[0]) and not np.allclose(x_T[1], latents[1])

  code, _, err = cli(["interpolate", images / "a.png", images / "b.jpg", "--invert", "--interp-noise",
                      "--checkpoint", pipe_dir, "--out", tmp_path / "both"], capsys)
  assert code == 2 and "give one of them" in err and not (tmp_path / "both").exists()
  code, _, err = cli(["textdiff", images / "a.png", "--from", "a", "--to", "b", "--invert", "--sampler", "ddpm",
                      "--checkpoint", pipe_dir, "--out", tmp_path / "ddpm"], capsys)
  assert code == 2 and "drop --sampler ddpm" in err


def test_pipeline_benchmark_reports_the_one_program_and_the_stages():
  from unclip_jax.bench import pipeline as bench

  steps = {"prior": {"steps": "2"}, "decoder": {"steps": "2"}, "sr_64_256": {"steps": "2"}}
  report = bench.run("tiny", [3], overrides=steps, stages=True, repeats=2, log=lambda m: None)
  (row,) = report["results"]
  assert row["rows"] == 8 and row["repeats"] == 2 and row["finite"]  # 3 images padded to the 8 devices
  assert row["program"] == "text → prior 2 → decoder 2 → sr_64_256 2"
  assert row["compile_s"] > 0 and 0 < row["sampling_s"] <= row["wall_s"]
  assert set(row["stages"]) == {"clip_text", "prior", "decoder", "upsamplers"}
  assert all(v["compile_s"] > 0 for v in row["stages_first_call"].values()) and row["stages_wall_s"] > 0
