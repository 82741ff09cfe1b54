"""`python -m unclip_jax.embed`: every record carries embeddings equal to a direct CLIP forward on itself."""

from __future__ import annotations

import json
import sys

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from unclip_jax import embed
from unclip_jax.checkpoint import save_stage
from unclip_jax.data import embedded, pipeline, prepare
from unclip_jax.errors import UserError, run_cli
from unclip_jax.images import fit_image
from unclip_jax.models import clip as clip_model
from unclip_jax.models import clip_encoder
from unclip_jax.models.tokenizer import Tokenizer

CONFIG = clip_model.PRESETS["tiny"].replace(vision_layers=1, text_layers=1)
SMALL = CONFIG.replace(image_size=16)  # 32-pixel data through a 16-pixel CLIP: the resize path


def _random_params(config, seed):
  """Random parameters of the right shapes without compiling `init` (slow on a shared 2-core machine)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: rng.normal(0, 0.2, x.shape).astype(np.float32),
                      clip_model.abstract_params(config))


def _run(argv, capsys):
  with pytest.raises(SystemExit) as exit_info:
    run_cli(embed.main, argv)
  out, err = capsys.readouterr()
  return exit_info.value.code, out, err


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  root = tmp_path_factory.mktemp("embed")
  params = _random_params(CONFIG, 0)
  save_stage(root / "clip", params, kind="clip", config=CONFIG.to_dict())
  save_stage(root / "prior", {"w": np.zeros(3, np.float32)}, kind="prior", config={"width": 3})
  save_stage(root / "mismatched", params, kind="clip", config=CONFIG.replace(text_width=64).to_dict())
  data = root / "data"
  source_config = prepare.prepare_shapes(str(data), 32, train_size=24, heldout_size=8).builder_config.name
  argv = ["--checkpoint", str(root / "clip"), "--data_dir", str(data), "--dataset", "shapes",
          "--dataset_config", source_config, "--splits", "train,heldout", "--name", "tiny", "--batch_size", "10",
          "--states_dtype", "float16"]
  with pytest.raises(SystemExit) as exit_info:  # 24 = 10 + 10 + 4: a padded last batch
    run_cli(embed.main, argv)
  assert exit_info.value.code == 0
  return root, data, source_config, params, argv


def _forward(params, config, pixels, tokens):
  out = jax.jit(clip_model.CLIP(config).apply)({"params": params}, pixels, tokens)
  return {k: np.asarray(v) for k, v in out.items()}


def test_every_record_matches_a_direct_clip_forward_on_its_own_image_and_caption(run):
  _, data, source_config, params, _ = run
  tokenizer = Tokenizer(CONFIG.context_length)
  rows = []
  for split, count in (("train", 24), ("heldout", 8)):
    source = pipeline.open_source(data, "shapes", split, source_config)
    records = pipeline.open_source(data, "embedded", split, "tiny")
    assert len(records) == len(source) == count
    for i in range(count):  # source order, pixel-exact PNG, text copied through
      row = records[i]
      assert set(row) == set(embedded.RECORD_KEYS)
      assert np.array_equal(row["image"], source[i]["image"]) and row["image"].dtype == np.uint8
      assert row["caption"] == source[i]["caption"] and row["spec"] == source[i]["spec"]
      caption = row["caption"].decode()
      assert tokenizer.decode(row["tokens"]) == " ".join(caption.split()).lower()
      n_real = len(tokenizer.encode(caption)) + 2
      assert row["text_mask"].tolist() == [True] * n_real + [False] * (CONFIG.context_length - n_real)
      rows.append(row)
  images = np.stack([r["image"] for r in rows])
  tokens = np.stack([r["tokens"] for r in rows])
  assert tokens.dtype == np.int32 and np.array_equal(tokens, tokenizer([r["caption"].decode() for r in rows]))
  want = _forward(params, CONFIG, clip_model.normalize_images(images, CONFIG), tokens)
  for key, ref in (("image_embedding", "image_embeds"), ("text_embedding", "text_embeds")):
    got = np.stack([r[key] for r in rows])
    assert got.dtype == np.float32 and got.shape == (32, CONFIG.embed_dim)
    np.testing.assert_allclose(got, want[ref], rtol=0, atol=1e-5)
  states = np.stack([r["text_states"] for r in rows])
  assert states.dtype == np.float16 and states.shape == (32, CONFIG.context_length, CONFIG.text_width)
  np.testing.assert_allclose(states.astype(np.float32), want["text_states"], rtol=1e-3, atol=1e-3)
  assert "tensorflow" not in sys.modules


def test_metadata_names_the_checkpoint_and_source_and_holds_embedding_statistics(run):
  root, data, source_config, params, _ = run
  meta = embedded.load_metadata(data, "tiny")
  assert meta["clip"]["checkpoint"] == str((root / "clip").absolute())
  assert meta["clip"]["config"] == json.loads(json.dumps(CONFIG.to_dict()))
  assert meta["clip"]["params_sha256"] == clip_encoder.params_sha256(params)
  assert meta["source"]["name"] == "shapes" and meta["source"]["config"] == source_config
  assert meta["states_dtype"] == "float16" and meta["num_examples"] == 32
  assert meta["splits"]["train"]["truncated_captions"] == 0  # shapes captions fit in 16 tokens
  per_split = {}
  for split in ("train", "heldout"):
    records = pipeline.open_source(data, "embedded", split, "tiny")
    per_split[split] = np.stack([records[i]["image_embedding"] for i in range(len(records))]).astype(np.float64)
    mean, std = embedded.clip_stats(meta, split)
    np.testing.assert_allclose(mean, per_split[split].mean(0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(std, per_split[split].std(0), rtol=1e-5)
    assert meta["splits"][split]["num_examples"] == len(records)
  every = np.concatenate(list(per_split.values()))
  mean, std = embedded.clip_stats(meta)
  assert mean.shape == std.shape == (CONFIG.embed_dim,) and std.min() > 0
  np.testing.assert_allclose(mean, every.mean(0), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(std, every.std(0), rtol=1e-5)


def test_records_use_the_clip_encoder_mask_and_pixels_for_a_caption_holding_token_id_0(run, tmp_path):
  root, _, _, params, _ = run
  folder = tmp_path / "source"
  folder.mkdir()
  captions = ["wow!$ a red circle", "a blue square!%", "two green triangles"]  # '!' + punctuation: id 0
  rng = np.random.default_rng(3)
  for i, caption in enumerate(captions):
    Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / f"{i}.txt").write_text(caption)
  prepare.prepare_image_text(str(tmp_path / "data"), str(folder), name="bang", image_size=40, validation_fraction=0.0)
  embedded.embed(checkpoint=str(root / "clip"), data_dir=str(tmp_path / "data"), dataset="image_text",
                 dataset_config="bang", name="bang", batch_size=2)  # 40-pixel images through a 32-pixel CLIP
  records = pipeline.open_source(tmp_path / "data", "embedded", "train", "bang")
  rows = [records[i] for i in range(len(records))]
  tokens, masks = np.stack([r["tokens"] for r in rows]), np.stack([r["text_mask"] for r in rows])
  stored = [r["caption"].decode() for r in rows]
  assert sorted(stored) == sorted(captions) and masks.dtype == bool
  np.testing.assert_array_equal(masks, clip_encoder.text_mask(tokens))
  np.testing.assert_array_equal(masks.sum(1), [len(Tokenizer().encode(c)) + 2 for c in stored])
  assert sum((t[m] == 0).any() for t, m in zip(tokens, masks)) == 2  # id 0 inside two masked captions
  assert not np.array_equal(masks, tokens != 0)
  pixels = np.stack([clip_encoder.clip_pixels(r["image"], CONFIG.image_size) for r in rows])
  want = _forward(params, CONFIG, clip_model.normalize_images(pixels, CONFIG), tokens)
  np.testing.assert_allclose(np.stack([r["image_embedding"] for r in rows]), want["image_embeds"], atol=1e-5)
  np.testing.assert_allclose(np.stack([r["text_embedding"] for r in rows]), want["text_embeds"], atol=1e-5)


def test_an_existing_name_is_refused_and_left_untouched(run, capsys):
  _, data, _, _, argv = run
  folder = pipeline.dataset_dir(data, "embedded", "tiny")
  before = {p.name: p.read_bytes() for p in folder.iterdir()}
  code, _, err = _run(argv, capsys)
  assert code == 2 and "already exists" in err and len(err.strip().splitlines()) == 1
  assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_float32_states_and_images_resized_to_the_clip_size(run, tmp_path, capsys):
  root, data, source_config, _, _ = run
  params = _random_params(SMALL, 1)
  save_stage(tmp_path / "clip16", params, kind="clip", config=SMALL.to_dict())
  code, out, err = _run(["--checkpoint", str(tmp_path / "clip16"), "--data_dir", str(data), "--dataset", "shapes",
                         "--splits", "heldout", "--name", "small", "--states_dtype", "float32",
                         "--out_data_dir", str(tmp_path)], capsys)  # the only prepared config is picked
  assert code == 0, err
  assert "heldout: 8" in out
  records = pipeline.open_source(tmp_path, "embedded", "heldout", "small")
  rows = [records[i] for i in range(len(records))]
  assert rows[0]["image"].shape == (32, 32, 3)  # the stored image stays the original
  pixels = np.stack([fit_image(r["image"], 16) for r in rows])  # the one policy: PIL bicubic, uint8
  want = _forward(params, SMALL, clip_model.normalize_images(pixels, SMALL), np.stack([r["tokens"] for r in rows]))
  np.testing.assert_allclose(np.stack([r["image_embedding"] for r in rows]), want["image_embeds"], atol=1e-5)
  states = np.stack([r["text_states"] for r in rows])
  assert states.dtype == np.float32
  np.testing.assert_allclose(states, want["text_states"], rtol=0, atol=1e-5)
  assert embedded.load_metadata(tmp_path, "small")["source"]["config"] == source_config
  # float16 states are stored as 2 bytes a value, not widened: same records, exactly L·W·2 bytes smaller each
  f16 = tfds.builder_from_directory(str(pipeline.dataset_dir(data, "embedded", "tiny"))).info.splits["heldout"]
  f32 = tfds.builder_from_directory(str(pipeline.dataset_dir(tmp_path, "embedded", "small"))).info.splits["heldout"]
  assert f32.num_bytes - f16.num_bytes == 8 * SMALL.context_length * SMALL.text_width * 2


def test_a_run_that_fails_midway_leaves_no_dataset(run, tmp_path, monkeypatch):
  root, data, _, _, _ = run
  calls, png = [], embedded.png_bytes

  def failing_png(image):
    calls.append(1)
    if len(calls) > 12:  # in the second batch, after its forward
      raise RuntimeError("simulated crash")
    return png(image)

  monkeypatch.setattr(embedded, "png_bytes", failing_png)
  with pytest.raises(RuntimeError, match="simulated crash"):
    embedded.embed(checkpoint=str(root / "clip"), data_dir=str(data), dataset="shapes", name="crashed",
                   out_data_dir=str(tmp_path), batch_size=10)
  assert len(calls) == 13
  with pytest.raises(UserError, match="no prepared embedded/crashed"):
    pipeline.dataset_dir(tmp_path, "embedded", "crashed")


@pytest.mark.parametrize("change, message", [
    ({"--checkpoint": "{root}/missing"}, "does not exist"),
    ({"--checkpoint": "{root}/prior"}, "holds a prior checkpoint"),
    ({"--checkpoint": "{root}/mismatched"}, "does not match its config"),
    ({"--dataset": "cifar"}, "no prepared cifar"),
    ({"--splits": "train,test"}, "no split 'test'"),
    ({"--name": "../escape"}, "--name"),
    ({"--batch_size": "0"}, "--batch_size"),
    ({"--states_dtype": "bfloat16"}, "--states_dtype"),
])
def test_bad_input_is_one_error_line_and_exit_code_2(run, capsys, change, message):
  root, data, _, _, argv = run
  argv = list(argv)
  for flag, value in change.items():
    argv[argv.index(flag) + 1] = value.format(root=root)
  argv[argv.index("--name") + 1] = argv[argv.index("--name") + 1] if "--name" in change else "never"
  code, out, err = _run(argv, capsys)
  assert code == 2, err
  assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err
  assert "Traceback" not in err
  assert not (data / "embedded" / "never").exists()
