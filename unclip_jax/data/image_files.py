"""The user's own captioned images: a folder of `IMAGE` + same-stem `.txt` files, or webdataset tar shards.

Sources are walked in a fixed (sorted) order and every example has a stable key, so the train/validation
split is a pure function of the key. Unreadable images and images without a caption are skipped and
counted by reason; they never stop a run, because a few bad files are normal in scraped data. Decoding,
resizing and cropping follow the one image policy of `unclip_jax.images` (`decode_image`).
"""

from __future__ import annotations

import collections
import glob
import hashlib
import os
import tarfile
from pathlib import Path
from typing import Iterator

from unclip_jax.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
SKIP_UNREADABLE = "unreadable_image"
SKIP_NO_CAPTION = "missing_caption"
SKIP_NO_IMAGE = "caption_without_image"


def resolve_source(source: str) -> tuple[str, list[Path]]:
  """('folder', [root]) or ('tar', [shards...]) for `--source`; a `UserError` when nothing is there."""
  if not source:
    raise UserError("image_text needs --source: a folder of images with same-stem .txt captions, or a glob "
                    "of webdataset .tar shards")
  path = Path(source).expanduser()
  if path.is_dir():
    return "folder", [path]
  if path.is_file() and path.suffix == ".tar":
    return "tar", [path]
  shards = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if p.endswith(".tar") and os.path.isfile(p))
  if shards:
    return "tar", shards
  raise UserError(f"--source {source} is neither a folder nor a .tar shard (or a glob matching some)")


def split_fraction(key: str) -> float:
  """A fixed pseudo-random number in [0, 1) per example key; validation is a threshold on it."""
  return int.from_bytes(hashlib.sha256(f"image_text/{key}".encode()).digest()[:8], "big") / 2.0**64


def clean_caption(text: bytes | str) -> str:
  if isinstance(text, bytes):
    text = text.decode("utf-8", errors="replace")
  return " ".join(text.split())


def iter_raw(kind: str, paths: list[Path], counts: collections.Counter,
             with_data: bool = True) -> Iterator[tuple[str, bytes, str]]:
  """Yields (key, image bytes, caption) and counts what had to be skipped (before decoding).

  With `with_data=False` the image bytes are left unread (empty): a cheap pass that lists the keys.
  """
  if kind == "folder":
    yield from _iter_folder(paths[0], counts, with_data)
  else:
    for shard in paths:
      yield from _iter_tar(shard, counts, with_data)


def _iter_folder(root: Path, counts: collections.Counter, with_data: bool):
  images, captions = [], set()
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames.sort()
    for name in sorted(filenames):
      path = Path(dirpath) / name
      suffix = path.suffix.lower()
      if suffix in IMAGE_SUFFIXES:
        images.append(path)
      elif suffix == ".txt":
        captions.add(path.with_suffix(""))
  stems = {p.with_suffix("") for p in images}
  counts[SKIP_NO_IMAGE] += len(captions - stems)
  for path in images:
    txt = path.with_suffix(".txt")
    caption = clean_caption(txt.read_bytes()) if path.with_suffix("") in captions else ""
    if not caption:
      counts[SKIP_NO_CAPTION] += 1
      continue
    try:
      data = path.read_bytes() if with_data else b""
    except OSError:
      counts[SKIP_UNREADABLE] += 1
      continue
    yield path.relative_to(root).as_posix(), data, caption


def _wds_key(member_name: str) -> tuple[str, str]:
  """webdataset convention: the key is the path up to the first dot of the file name."""
  directory, base = os.path.split(member_name)
  stem, _, ext = base.partition(".")
  return os.path.join(directory, stem), ext.lower()


def _iter_tar(shard: Path, counts: collections.Counter, with_data: bool):
  try:
    tar = tarfile.open(shard, mode="r|*")  # streaming: shards can be large
  except (OSError, tarfile.TarError):
    counts["unreadable_shard"] += 1
    return
  group_key, group = None, {}

  def flush():
    image_ext = next((e for e in group if "." + e in IMAGE_SUFFIXES), None)
    caption = clean_caption(group["txt"]) if "txt" in group else ""
    if image_ext is None:
      if caption:
        counts[SKIP_NO_IMAGE] += 1
      return None
    if not caption:
      counts[SKIP_NO_CAPTION] += 1
      return None
    return f"{shard.name}/{group_key}", group[image_ext], caption

  try:
    with tar:
      for member in tar:
        if not member.isfile():
          continue
        key, ext = _wds_key(member.name)
        if key != group_key:
          if group_key is not None and (item := flush()) is not None:
            yield item
          group_key, group = key, {}
        group[ext] = tar.extractfile(member).read() if with_data or ext == "txt" else b""
  except (OSError, tarfile.TarError, EOFError):
    counts["truncated_shard"] += 1  # keep what was read before the damage
  if group_key is not None and (item := flush()) is not None:
    yield item
