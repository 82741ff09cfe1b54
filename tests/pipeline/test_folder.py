"""Pipeline folders: assembling, the pipeline CLI, EMA selection when loading a stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from unclip_jax import pipeline as P
from unclip_jax.errors import run_cli
from unclip_jax.pipeline import __main__ as pipeline_cli


def test_assemble_writes_karlo_defaults(pipe_dir, tmp_path, capsys):
  from unclip_jax.pipeline.__main__ import main as pipeline_main

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
  # A packed stage (`pipeline pack`, as the shipped demo) holds only its EMA tree: loaded as such, silently.
  save_stage(tmp_path / "packed", ema, kind=kind, config=config, extra={"ema": False, "weights": "ema"})
  said.clear()
  tree, which = P.load_stage_tree(tmp_path / "packed", kind, read_stage(tmp_path / "packed"), ema=True,
                                  log=said.append)
  assert which == "ema" and not said
  np.testing.assert_array_equal(tree["params"]["prd_embedding"], ema["params"]["prd_embedding"])
  tree, which = P.load_stage_tree(tmp_path / "packed", kind, read_stage(tmp_path / "packed"), ema=False,
                                  log=said.append)
  assert which == "ema"
  assert said == ["packed: this packed checkpoint holds only its EMA weights; --no-ema does not apply"]


def test_init_random_refuses_a_non_empty_folder(tmp_path, capsys):
  (tmp_path / "x").mkdir()
  (tmp_path / "x" / "keep.txt").write_text("mine")
  with pytest.raises(SystemExit) as e:
    run_cli(pipeline_cli.main, ["init-random", "--preset", "tiny", "--out", str(tmp_path / "x")])
  assert e.value.code == 2 and "not empty" in capsys.readouterr().err
  assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["keep.txt"]


@pytest.mark.slow
def test_pack_ships_sampling_weights_in_float16_with_settings_and_meta(pipe_dir, tmp_path, capsys):
  """pack: each stage's sampling weights stored as float16 (about half the bytes), the settings given,
  the meta fields; the packed pipeline samples like the source (float16 rounding aside)."""
  import json

  meta = tmp_path / "meta.json"
  meta.write_text(json.dumps({"recipe": "test", "results": {"x": 1}}))
  out = tmp_path / "packed"
  with pytest.raises(SystemExit) as e:
    run_cli(pipeline_cli.main, ["pack", str(pipe_dir), "--out", str(out), "--meta", str(meta),
                                "--sampling", '{"decoder": {"steps": "3", "guidance_scale": 2.5}}'])
  assert e.value.code == 0, capsys.readouterr().err
  info = P.read_pipeline(out)
  assert info["meta"]["recipe"] == "test" and info["meta"]["results"] == {"x": 1}
  assert (info["sampling"]["decoder"].steps, info["sampling"]["decoder"].guidance_scale) == ("3", 2.5)
  assert info["sampling"]["prior"] == P.read_pipeline(pipe_dir)["sampling"]["prior"]
  assert all(info["stages"][s]["storage_dtype"] == "float16" for s in info["paths"])

  def size(d):
    return sum(p.stat().st_size for p in Path(d).rglob("*") if p.is_file())
  assert size(out) < 0.7 * size(pipe_dir)
  a, b = P.Pipeline.load(pipe_dir, log=lambda m: None), P.Pipeline.load(out, log=lambda m: None)
  np.testing.assert_allclose(np.asarray(b.decoder_params["unet"]["conv_in"]["kernel"]),
                             np.asarray(a.decoder_params["unet"]["conv_in"]["kernel"]), atol=2e-3)
  with pytest.raises(SystemExit) as e:  # bad settings and a non-empty --out: one line, exit 2
    run_cli(pipeline_cli.main, ["pack", str(pipe_dir), "--out", str(tmp_path / "p2"), "--sampling", '{"nope": {}}'])
  assert e.value.code == 2 and "nope" in capsys.readouterr().err
  with pytest.raises(SystemExit) as e:
    run_cli(pipeline_cli.main, ["pack", str(pipe_dir), "--out", str(out)])
  assert e.value.code == 2 and "not empty" in capsys.readouterr().err


@pytest.mark.slow
def test_pack_reuse_unchanged_keeps_the_files_of_identical_stages_only(pipe_dir, tmp_path, capsys):
  """A re-pack of unchanged weights with --reuse-unchanged leaves every weight file as it was (orbax
  names files at random, so plain re-packs change them all); a stage whose weights changed gets new files;
  the result loads and checks its checksums like any packed pipeline."""
  import shutil

  from unclip_jax.checkpoint import PARAMS_DIR, file_digests
  from unclip_jax.pipeline import make_random_pipeline

  def pack(src, out, *extra):
    with pytest.raises(SystemExit) as e:
      run_cli(pipeline_cli.main, ["pack", str(src), "--out", str(out), *map(str, extra)])
    assert e.value.code == 0, capsys.readouterr().err

  def files(folder, stage):
    return file_digests(Path(folder) / stage / PARAMS_DIR)

  first, again = tmp_path / "first", tmp_path / "again"
  pack(pipe_dir, first)
  pack(pipe_dir, tmp_path / "plain")
  stages = list(P.read_pipeline(first)["paths"])
  assert all(files(first, s) != files(tmp_path / "plain", s) for s in stages)  # why the option exists
  pack(pipe_dir, again, "--reuse-unchanged", first)
  assert all(files(first, s) == files(again, s) for s in stages)

  changed = tmp_path / "changed_src"  # the same pipeline with another decoder
  shutil.copytree(pipe_dir, changed)
  decoder = P.read_pipeline(changed)["paths"]["decoder"]
  shutil.rmtree(decoder)
  other = make_random_pipeline(tmp_path / "other", "tiny", seed=1)
  shutil.copytree(P.read_pipeline(other)["paths"]["decoder"], decoder)
  mixed = tmp_path / "mixed"
  pack(changed, mixed, "--reuse-unchanged", first)
  assert files(mixed, "decoder") != files(first, "decoder")
  assert all(files(mixed, s) == files(first, s) for s in stages if s != "decoder")
  loaded = P.Pipeline.load(mixed, log=lambda m: None)
  np.testing.assert_allclose(np.asarray(loaded.decoder_params["unet"]["conv_in"]["kernel"]),
                             np.asarray(P.Pipeline.load(other, log=lambda m: None)
                                        .decoder_params["unet"]["conv_in"]["kernel"]), atol=2e-3)
  with pytest.raises(SystemExit) as e:
    run_cli(pipeline_cli.main, ["pack", str(pipe_dir), "--out", str(tmp_path / "x2"), "--reuse-unchanged",
                                str(tmp_path / "nowhere")])
  assert e.value.code == 2 and "nowhere" in capsys.readouterr().err
