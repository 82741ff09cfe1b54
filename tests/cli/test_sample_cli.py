"""`python -m unclip_jax.sample` end to end on a tiny random-weight pipeline: text to image, sidecars,
the applications (variations, interpolate, textdiff, --invert) and bad input. The CLI runs in-process (its
pipeline cache keeps the compiled programs between tests), except one subprocess run that checks the bare
error line."""

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


def cli(argv, capsys):
  """Runs the CLI in-process: (exit code, stdout, stderr)."""
  with pytest.raises(SystemExit) as e:
    run_cli(sample.main, [str(a) for a in argv])
  out = capsys.readouterr()
  return e.value.code, out.out, out.err


def cached_pipeline():
  """The pipeline `sample` keeps in this process (its in-process cache), or None before the first run."""
  return next((pipe for pipe, _ in sample._CACHE.values()), None)


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
  assert "text → prior 4 → decoder 4 → sr_64_256 3: 4 rows, compile" in err  # 4 images on 4 of the 8 devices
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
  assert "no EMA weights" in err  # the in-process cache's pipeline says what its loading said
  np.testing.assert_array_equal(png(again / "0003.png"), imgs[3])
  assert not np.array_equal(imgs[2], imgs[3])

  # drawn on a machine whose batch of 12 rows the 8 devices here cannot split: replayed alone, with a note
  odd = tmp_path / "odd.json"
  odd.write_text(json.dumps({**rec, "batch_size": 12}))
  code, _, err = cli(["--from-sidecar", odd, "--out", tmp_path / "odd"], capsys)
  assert code == 0, err
  assert "a batch of 12 rows, which 8 device(s) cannot split; replaying it alone" in err
  assert np.abs(png(tmp_path / "odd" / "odd.png").astype(int) - imgs[3]).max() <= 1


@pytest.mark.slow
def test_decoder_candidates_from_the_flag_or_pipeline_json_are_recorded_and_reproduced(pipe_dir, tmp_path, capsys):
  """--decoder-candidates (CLIP reranking) overrides pipeline.json's decoder `candidates`; the sidecar records
  the count and replays the same image; candidate 0 is the image drawn without reranking, so a prompt whose
  best candidate is another one draws a different image."""
  args = ["--checkpoint", pipe_dir, "--prompt", "a red square", "--prompt", "a cat", "--num", 2, "--seed", 3]
  code, _, err = cli(args + ["--out", tmp_path / "one"], capsys)
  assert code == 0, err
  code, _, err = cli(args + ["--decoder-candidates", 3, "--out", tmp_path / "three"], capsys)
  assert code == 0, err
  rec = json.loads((tmp_path / "three" / "0001.json").read_text())
  assert rec["settings"]["decoder"]["candidates"] == 3 and rec["settings"]["prior"]["candidates"] == 1
  one, three = ([png(tmp_path / d / f"000{i}.png") for i in range(4)] for d in ("one", "three"))
  assert any(not np.array_equal(a, b) for a, b in zip(one, three))
  code, _, err = cli(["--from-sidecar", tmp_path / "three" / "0001.json", "--out", tmp_path / "again"], capsys)
  assert code == 0, err
  np.testing.assert_array_equal(png(tmp_path / "again" / "0001.png"), three[1])

  # the same count as the pipeline's default, from pipeline.json
  meta = json.loads((pipe_dir / P.PIPELINE_FILE).read_text())
  meta["stages"] = {k: str((pipe_dir / v).absolute()) for k, v in meta["stages"].items()}
  meta["sampling"]["decoder"]["candidates"] = 3
  folder = tmp_path / "ranked"
  folder.mkdir()
  (folder / P.PIPELINE_FILE).write_text(json.dumps(meta))
  code, _, err = cli(["--checkpoint", folder] + args[2:] + ["--out", tmp_path / "default"], capsys)
  assert code == 0, err
  for i in range(4):
    np.testing.assert_array_equal(png(tmp_path / "default" / f"000{i}.png"), three[i])


def test_same_seed_same_image_different_seed_different(pipe_dir):
  pipe = cached_pipeline() or P.Pipeline.load(pipe_dir, log=lambda m: None)
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


@pytest.mark.slow
def test_interpolate_endpoints_decode_from_endpoint_embeddings(pipe_dir, images, tmp_path, capsys, monkeypatch):
  from unclip_jax.zeroshot import load_image

  cli(["variations", images / "a.png", "--num", 1, "--checkpoint", pipe_dir, "--out", tmp_path / "warm"], capsys)
  pipe = cached_pipeline()
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


@pytest.mark.parametrize("argv, message", [
    (["--prompt", ""], "prompt is empty"),
    (["--prompts-file", "{tmp}/missing.txt"], "prompts file"),
    (["--prompt", "x", "--prior-steps", "-3"], "--prior-steps must lie between 1 and 1000"),
    (["--prompt", "x", "--decoder-steps", "100000"], "--decoder-steps must lie between 1 and 1000"),
    (["--prompt", "x", "--sr-steps", "abc"], "--sr-steps must be a whole number"),
    (["--prompt", "x", "--decoder-guidance", "nan"], "--decoder-guidance must be a finite number"),
    (["--prompt", "x", "--prior-guidance", "inf"], "--prior-guidance must be a finite number"),
    (["--prompt", "x", "--num", "0"], "--num must lie between"),
    (["--prompt", "x", "--decoder-candidates", "0"], "--decoder-candidates must lie between 1 and 64"),
    (["--prompt", "x", "--prior-candidates", "65"], "--prior-candidates must lie between 1 and 64"),
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


def test_textdiff_and_interpolate_invert_decode_from_the_images_ddim_latents(pipe_dir, images, tmp_path, capsys,
                                                                             monkeypatch):
  """--invert: every strength of a text diff starts from the image's DDIM latent, and an interpolation row
  slerps between the two images' latents; the decoder then runs DDIM with eta 0 and no clamp."""
  from unclip_jax.zeroshot import load_image

  cli(["variations", images / "a.png", "--num", 1, "--checkpoint", pipe_dir, "--out", tmp_path / "warm"], capsys)
  pipe = cached_pipeline()
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


def test_out_holding_earlier_results_is_refused_unless_overwrite(pipe_dir, tmp_path, capsys):
  out = tmp_path / "out"
  argv = ["--checkpoint", pipe_dir, "--prompt", "a red square", "--out", out]
  assert cli(argv, capsys)[0] == 0
  before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
  code, _, err = cli(argv, capsys)
  assert code == 2 and "holds earlier results (0000.json and 2 more)" in err and "--overwrite" in err
  assert err.count("\n") == 1 and {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
  code, _, err = cli(argv + ["--overwrite"], capsys)
  assert code == 0, err
  assert all(p.stat().st_mtime_ns >= before[p.name] for p in out.iterdir())
  (other := tmp_path / "mine").mkdir()
  (other / "notes.txt").write_text("not a result")  # a folder with other files is fine
  assert cli(["--checkpoint", pipe_dir, "--prompt", "x", "--out", other], capsys)[0] == 0


@pytest.mark.parametrize("damage,message", [
    ("truncate", "were saved (truncated?)"),
    ("flip", "differs from the file saved"),
    ("checksum", "does not match the checksum saved with it"),
])
def test_a_damaged_stage_checkpoint_is_named_in_one_error_line(damage, message, pipe_dir, tmp_path, capsys):
  import shutil

  copy = tmp_path / "pipe"
  shutil.copytree(pipe_dir, copy)
  stage = copy / "decoder"
  data = max((p for p in (stage / "params").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  if damage == "truncate":
    data.write_bytes(data.read_bytes()[:1000])
  elif damage == "flip":
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
  else:  # the files are intact but an array differs from what was saved
    meta = json.loads((stage / "stage.json").read_text())
    path = next(iter(meta["checksums"]))
    meta["checksums"][path] = "f" * 16
    (stage / "stage.json").write_text(json.dumps(meta))
  code, _, err = cli(["--checkpoint", copy, "--prompt", "x", "--out", tmp_path / "o"], capsys)
  lines = [l for l in err.splitlines() if l.startswith("error:")]
  assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
  assert f"stage checkpoint {stage} is damaged" in lines[0] and message in lines[0], lines[0]
  assert not (tmp_path / "o").exists()


def test_defaults_the_packaged_pipeline_and_the_next_free_samples_folder(pipe_dir, tmp_path, capsys, monkeypatch):
  from unclip_jax.pipeline import folder

  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(folder, "DEMO_PIPELINE", tmp_path / "not_installed")
  code, _, err = cli(["--prompt", "a red circle"], capsys)
  assert code == 2 and "no --checkpoint given and this install has no demo pipeline" in err
  monkeypatch.setattr(folder, "DEMO_PIPELINE", Path(pipe_dir))
  for expected in ("001", "002"):  # each run gets a new folder, so nothing is refused or overwritten
    code, out, err = cli(["--prompt", "a red circle"], capsys)
    assert code == 0, err
    assert f"samples/{expected}" in out and (tmp_path / "samples" / expected / "0000.png").is_file()
  rec = json.loads((tmp_path / "samples" / "001" / "0000.json").read_text())
  assert rec["checkpoint"] == str(Path(pipe_dir).absolute())


@pytest.mark.parametrize("prompt, warned, hint", [
    ("a red circle above a blue square", False, False),
    ("  A Red   Circle ", False, False),  # the tokenizer lower-cases and collapses whitespace
    ("three green triangles", False, False),
    ("a corgi", True, False),
    ("an orange circle", True, True),
    ("a red circle.", True, False),
])
def test_demo_prompt_warning_names_prompts_outside_the_shapes_captions(prompt, warned, hint):
  warning = sample.demo_prompt_warning(prompt)
  assert (warning is not None) == warned, warning
  if warned:
    assert warning.startswith(f"warning: {prompt!r} is outside") and "\n" not in warning
    assert ("a orange circle" in warning) == hint, warning
    assert "orange" in warning and "triangle" in warning and "left of" in warning and "--checkpoint" in warning


def test_the_default_demo_warns_about_prompts_outside_its_captions_and_still_draws(pipe_dir, tmp_path, capsys,
                                                                                  monkeypatch):
  from unclip_jax.pipeline import folder

  monkeypatch.setattr(folder, "DEMO_PIPELINE", Path(pipe_dir))
  code, _, err = cli(["--prompt", "a corgi", "--prompt", "a red circle", "--out", tmp_path / "a"], capsys)
  assert code == 0, err
  assert "warning: 'a corgi' is outside" in err and "'a red circle' is outside" not in err
  assert (tmp_path / "a" / "0000.png").is_file() and (tmp_path / "a" / "0001.png").is_file()
  # a pipeline the user names may have learned any captions: no warning
  code, _, err = cli(["--prompt", "a corgi", "--checkpoint", pipe_dir, "--out", tmp_path / "b"], capsys)
  assert code == 0 and "outside" not in err, err
