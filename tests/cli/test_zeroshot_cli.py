"""`python -m unclip_jax.zeroshot`: prints top classes; bad input is one `error:` line and exit code 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from unclip_jax import zeroshot
from unclip_jax.checkpoint import save_stage
from unclip_jax.errors import run_cli
from unclip_jax.models import clip as clip_model

CONFIG = clip_model.PRESETS["tiny"].replace(vision_layers=1, text_layers=1)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  root = tmp_path_factory.mktemp("zeroshot")
  params = clip_model.init_params(CONFIG, jax.random.key(0))
  ckpt = save_stage(root / "clip", params, kind="clip", config=CONFIG.to_dict())
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(root / "img.png")
  Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8), mode="L").save(root / "gray.jpg")
  (root / "notes.png").write_text("this is not an image")
  save_stage(root / "prior", {"w": np.zeros(3, np.float32)}, kind="prior", config={"width": 3})
  mismatched = root / "mismatched"
  shutil.copytree(ckpt, mismatched)
  meta = json.loads((mismatched / "stage.json").read_text())
  meta["config"]["text_width"] = 64
  (mismatched / "stage.json").write_text(json.dumps(meta))
  bad_config = root / "bad_config"
  shutil.copytree(ckpt, bad_config)
  meta["config"]["text_widht"] = 64
  (bad_config / "stage.json").write_text(json.dumps(meta))
  return root, params


def _run(argv, capsys):
  with pytest.raises(SystemExit) as exit_info:
    run_cli(zeroshot.main, argv)
  out, err = capsys.readouterr()
  return exit_info.value.code, out, err


def test_cli_prints_top_classes_in_a_subprocess(files):
  root, _ = files
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run([sys.executable, "-m", "unclip_jax.zeroshot", "--checkpoint", str(root / "clip"),
                         "--labels", "red circle, blue square,car", "--top", "2", str(root / "img.png"),
                         str(root / "gray.jpg")], capture_output=True, text=True, env=env, timeout=120)
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.strip().splitlines()
  assert len(lines) == 2 and lines[0].startswith(str(root / "img.png") + ": ")
  entries = lines[0].split(": ", 1)[1].split(", ")
  assert len(entries) == 2
  probs = [float(e.rsplit(" ", 1)[1]) for e in entries]
  assert probs[0] >= probs[1] > 0
  assert all(e.rsplit(" ", 1)[0] in ("red circle", "blue square", "car") for e in entries)


def test_missing_checkpoint_in_a_subprocess_has_no_traceback(files, tmp_path):
  root, _ = files
  proc = subprocess.run([sys.executable, "-m", "unclip_jax.zeroshot", "--checkpoint", str(tmp_path / "nope"),
                         "--labels", "cat,dog", str(root / "img.png")], capture_output=True, text=True,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip().startswith("error: ") and "does not exist" in proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


@pytest.mark.parametrize("case, expected", [
    ("missing_image", "does not exist"),
    ("not_an_image", "not an image"),
    ("folder_as_image", "not a file"),
    ("empty_labels", "empty"),
    ("blank_label", "empty"),
    ("missing_checkpoint", "does not exist"),
    ("other_kind", "prior checkpoint"),
    ("mismatched_shapes", "does not match its config"),
    ("bad_config", "text_widht"),
    ("no_images", "required"),
])
def test_bad_input_is_one_error_line(files, capsys, case, expected):
  root, _ = files
  ckpt, labels, images = root / "clip", "cat,dog", [str(root / "img.png")]
  if case == "missing_image":
    images = [str(root / "missing.png")]
  elif case == "not_an_image":
    images = [str(root / "notes.png")]
  elif case == "folder_as_image":
    images = [str(root)]
  elif case == "empty_labels":
    labels = ""
  elif case == "blank_label":
    labels = "cat,,dog"
  elif case == "missing_checkpoint":
    ckpt = root / "nowhere"
  elif case == "other_kind":
    ckpt = root / "prior"
  elif case == "mismatched_shapes":
    ckpt = root / "mismatched"
  elif case == "bad_config":
    ckpt = root / "bad_config"
  elif case == "no_images":
    images = []
  code, out, err = _run(["--checkpoint", str(ckpt), "--labels", labels, *images], capsys)
  assert code == 2
  assert err.startswith("error: ") and err.count("\n") == 1, err
  assert expected in err, err
  assert out == ""


def test_prompt_ensemble_is_renormalised_mean(files):
  _, params = files
  templates = ["a photo of a {}.", "a {}"]
  clf = zeroshot.ZeroShotClassifier(CONFIG, params, ["cat", "dog"], templates)
  single = [zeroshot.ZeroShotClassifier(CONFIG, params, ["cat", "dog"], [t]).class_embeddings for t in templates]
  want = single[0] + single[1]
  want /= np.linalg.norm(want, axis=-1, keepdims=True)
  np.testing.assert_allclose(clf.class_embeddings, want, atol=1e-6)
  images = np.zeros((3, CONFIG.image_size, CONFIG.image_size, 3), np.uint8)
  probs = clf.predict(images)
  assert probs.shape == (3, 2)
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)



def test_a_pipeline_folder_or_the_packaged_default_gives_its_clip(files, pipe_dir, capsys, monkeypatch):
  """--checkpoint may name a pipeline folder (its CLIP stage is used); without it the packaged demo is."""
  from unclip_jax.pipeline import folder

  root, _ = files
  assert zeroshot.clip_folder(str(pipe_dir)) == Path(pipe_dir) / "clip"
  assert zeroshot.clip_folder(str(root / "clip")) == root / "clip"
  monkeypatch.setattr(folder, "DEMO_PIPELINE", Path(pipe_dir))
  assert zeroshot.clip_folder(None) == Path(pipe_dir) / "clip"
  code, out, err = _run(["--labels", "cat,dog", str(root / "img.png")], capsys)
  assert code == 0 and out.startswith(f"{root / 'img.png'}: "), err
