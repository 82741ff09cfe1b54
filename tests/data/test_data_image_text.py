"""The user's own images + captions (folder or webdataset tars): skips counted, shapes right, split stable."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from unclip_jax.data import image_files, pipeline, prepare
from unclip_jax.errors import UserError, run_cli

SIZE = 16


def _encoded(image: np.ndarray, fmt: str) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format=fmt)
  return buffer.getvalue()


def _stripes(h: int, w: int) -> np.ndarray:
  """Red top quarter, blue middle half, green bottom quarter: a centre crop of a tall image is blue."""
  image = np.zeros((h, w, 3), np.uint8)
  image[: h // 4] = (255, 0, 0)
  image[h // 4: 3 * h // 4] = (0, 0, 255)
  image[3 * h // 4:] = (0, 255, 0)
  return image


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """5 good pairs (PNG, JPEG, RGBA, nested), 1 corrupt image, 1 image without caption, 1 orphan caption."""
  root = tmp_path_factory.mktemp("images")
  (root / "sub" / "deeper").mkdir(parents=True)
  rng = np.random.default_rng(0)
  (root / "tall.png").write_bytes(_encoded(_stripes(80, 40), "PNG"))
  (root / "tall.txt").write_text("a  tall\n striped   image\n")
  (root / "noise.jpg").write_bytes(_encoded(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8), "JPEG"))
  (root / "noise.txt").write_text("random noise")
  clear = np.zeros((20, 20, 4), np.uint8)  # fully transparent: must come out white
  (root / "sub" / "clear.png").write_bytes(_encoded(clear, "PNG"))
  (root / "sub" / "clear.txt").write_text("nothing at all")
  (root / "sub" / "grey.png").write_bytes(_encoded(np.full((16, 16), 128, np.uint8), "PNG"))
  (root / "sub" / "grey.txt").write_text("a grey square")
  (root / "sub" / "deeper" / "wide.jpeg").write_bytes(_encoded(_stripes(40, 40).transpose(1, 0, 2), "JPEG"))
  (root / "sub" / "deeper" / "wide.txt").write_text("a wide one")
  (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
  (root / "broken.txt").write_text("never seen")
  (root / "uncaptioned.png").write_bytes(_encoded(np.zeros((8, 8, 3), np.uint8), "PNG"))
  (root / "orphan.txt").write_text("a caption without an image")
  (root / "notes.md").write_text("ignored")
  return root


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
  """img2dataset layout (KEY.jpg, KEY.txt, KEY.json): 3 good, 1 corrupt, 2 without caption, 1 caption alone."""
  path = tmp_path_factory.mktemp("shards") / "00000.tar"
  members = []
  for i in range(3):
    members += [(f"00000{i}.jpg", _encoded(np.full((30, 60, 3), 40 * i, np.uint8), "JPEG")),
                (f"00000{i}.txt", f"shard caption {i}".encode()), (f"00000{i}.json", b"{}")]
  members += [("000003.png", b"\x89PNG\r\n\x1a\n truncated"), ("000003.txt", b"corrupt image")]
  members += [("000004.webp", _encoded(np.zeros((10, 10, 3), np.uint8), "WEBP")), ("000004.json", b"{}")]
  members += [("000005.png", _encoded(np.zeros((10, 10, 3), np.uint8), "PNG")), ("000005.txt", b"  \n")]
  members += [("000006.txt", b"an image that went missing")]
  with tarfile.open(path, "w") as tar:
    for name, data in members:
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  return path


def _read_all(root, name):
  """{split: {key: example}}; a split that got no keys is not written (tfds cannot write empty splits)."""
  import tensorflow_datasets as tfds

  out = {"train": {}, "validation": {}}
  for split in tfds.builder_from_directory(str(pipeline.dataset_dir(root, "image_text", name))).info.splits:
    source = pipeline.open_source(root, "image_text", split, name)
    out[split] = {json.loads(source[i]["spec"])["key"]: source[i] for i in range(len(source))}
  return out


def test_folder_counts_skips_and_crops(folder, tmp_path):
  builder = prepare.prepare_image_text(str(tmp_path), str(folder), name="mine", image_size=SIZE,
                                       validation_fraction=0.4)
  meta = builder.info.metadata
  assert meta["skipped"] == {"caption_without_image": 1, "missing_caption": 1, "unreadable_image": 1}
  assert meta["num_skipped"] == 3 and meta["num_examples"] == 5
  splits = _read_all(tmp_path, "mine")
  assert splits["train"] and splits["validation"]  # 0.4 of these 5 keys hash to validation
  keys = set(splits["train"]) | set(splits["validation"])
  assert keys == {"tall.png", "noise.jpg", "sub/clear.png", "sub/grey.png", "sub/deeper/wide.jpeg"}
  assert not set(splits["train"]) & set(splits["validation"])
  for split, examples in splits.items():
    for key in examples:
      assert (image_files.split_fraction(key) < 0.4) == (split == "validation")
  examples = {**splits["train"], **splits["validation"]}
  for example in examples.values():
    assert example["image"].shape == (SIZE, SIZE, 3) and example["image"].dtype == np.uint8
  tall = examples["tall.png"]
  assert tall["caption"] == b"a tall striped image"
  blue = np.array([0, 0, 255])
  assert np.abs(tall["image"][3:-3].astype(int) - blue).max() <= 2  # the centre of a tall image, not its ends
  wide = examples["sub/deeper/wide.jpeg"]["image"].astype(int)
  assert np.abs(wide[:, SIZE // 2] - blue).max() < 40 and wide[:, 0, 0].mean() > 150  # red left edge kept
  assert (examples["sub/clear.png"]["image"] == 255).all()
  assert (examples["sub/grey.png"]["image"] == 128).all()


def test_tar_shards_and_cli_report(folder, shard, tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    run_cli(prepare.main, ["image_text", "--data_dir", str(tmp_path), "--source", str(shard.parent / "*.tar"),
                           "--name", "web", "--image_size", str(SIZE)])
  out = capsys.readouterr().out
  assert e.value.code == 0, out
  assert "image_text/web/1.0.0" in out
  assert "skipped 4 (caption_without_image: 1, missing_caption: 2, unreadable_image: 1)" in out
  splits = _read_all(tmp_path, "web")
  examples = {**splits["train"], **splits["validation"]}
  assert set(examples) == {f"00000.tar/00000{i}" for i in range(3)}
  assert examples["00000.tar/000002"]["caption"] == b"shard caption 2"
  assert examples["00000.tar/000002"]["image"].shape == (SIZE, SIZE, 3)
  # preparing again with the same settings reuses the data; different settings under that name are refused
  prepare.prepare_image_text(str(tmp_path), str(shard.parent / "*.tar"), name="web", image_size=SIZE)
  with pytest.raises(UserError, match="was prepared with .* pick another --name"):
    prepare.prepare_image_text(str(tmp_path), str(folder), name="web", image_size=SIZE)


def test_bad_input(tmp_path, capsys):
  cases = [
      (["--source", str(tmp_path / "missing")], "neither a folder nor a .tar shard"),
      ([], "image_text needs --source"),
      (["--source", str(tmp_path)], "no images"),
      (["--source", str(tmp_path), "--image_size", "4"], "--image_size must be between 8 and 1024"),
      (["--source", str(tmp_path), "--name", "../up"], "--name must be letters"),
  ]
  for extra, message in cases:
    with pytest.raises(SystemExit) as e:
      run_cli(prepare.main, ["image_text", "--data_dir", str(tmp_path / "d")] + extra)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and err.count("\n") == 1, err
  (tmp_path / "lonely.png").write_bytes(_encoded(np.zeros((8, 8, 3), np.uint8), "PNG"))
  with pytest.raises(UserError, match="no usable image.caption pairs"):
    prepare.prepare_image_text(str(tmp_path / "d"), str(tmp_path), name="empty")
  (tmp_path / "lonely.txt").write_text("now captioned")
  (tmp_path / "lonely.png").write_bytes(b"not an image any more")
  with pytest.raises(UserError, match="every image of the train split .* was unreadable"):
    prepare.prepare_image_text(str(tmp_path / "d"), str(tmp_path), name="broken", validation_fraction=0.0)
  assert not list((tmp_path / "d").rglob("*.array_record*"))  # nothing half-written is left
