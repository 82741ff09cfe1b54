"""Finding and reading one component's weights in any layout diffusers / transformers `save_pretrained` writes.

A component folder (diffusers' `prior/`, `decoder/`, ..., transformers' `text_encoder/`, `image_encoder/`)
holds its tensors as one of, in the order we look for them:
  NAME.safetensors, NAME.safetensors.index.json (sharded), NAME.bin, NAME.bin.index.json,
and the same with the fp16 variant (NAME.fp16.safetensors, NAME.safetensors.index.fp16.json, ...), where
NAME is `diffusion_pytorch_model` (diffusers) or `model` / `pytorch_model` (transformers). Released Karlo
folders ship safetensors and .bin side by side, some only fp16 variants. `WeightFiles` reads tensor shapes
before any tensor (safetensors headers; a .bin is memory-mapped) so a converter can check everything first,
and loads tensors as float32 numpy arrays. Reading safetensors needs only numpy; .bin files need torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np

from unclip_jax.errors import UserError

DIFFUSERS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
TRANSFORMERS = ("model.safetensors", "pytorch_model.bin")


def _variant(name: str, variant: str) -> str:
  """diffusers' / transformers' variant naming: the variant goes before the last suffix."""
  stem, _, ext = name.rpartition(".")
  return f"{stem}.{variant}.{ext}"


def candidates(names: tuple[str, ...]) -> list[str]:
  """File names to look for, best first: float32 before fp16, safetensors before .bin, whole before sharded."""
  out = []
  for variant in (None, "fp16"):
    for name in names:
      for file in (name, f"{name}.index.json"):
        out.append(file if variant is None else _variant(file, variant))
  return out


def _torch_load(path: Path) -> dict:
  try:
    import torch
  except ImportError:
    raise UserError(f"reading {path} needs PyTorch; install torch or convert the file to .safetensors") from None
  try:
    obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
  except Exception as e:  # noqa: BLE001 - a corrupt file is the user's to fix
    raise UserError(f"cannot read {path} as a PyTorch state dict ({type(e).__name__})") from None
  if not isinstance(obj, dict):
    raise UserError(f"{path} does not hold a state dict (found {type(obj).__name__})")
  return {k: v for k, v in obj.items() if hasattr(v, "shape")}


class WeightFiles:
  """The weights of one component folder: which file(s), every tensor's shape, float32 tensors on demand."""

  def __init__(self, folder: Path, names: tuple[str, ...] = DIFFUSERS):
    self.folder = Path(folder)
    found = [f for f in candidates(names) if (self.folder / f).is_file()]
    if not found:
      raise UserError(f"{self.folder} has no weights file (looked for {', '.join(candidates(names)[:4])}, "
                      "their .index.json shards and fp16 variants)")
    self.path = self.folder / found[0]
    self.shards = self._shards()  # {tensor key: file}

  @property
  def name(self) -> str:
    """The file read, relative to the folder's parent (for messages: 'decoder/diffusion_pytorch_model.bin')."""
    return f"{self.folder.name}/{self.path.name}"

  def _shards(self) -> dict[str, Path]:
    if not self.path.name.endswith(".json"):
      return {k: self.path for k in self._file_shapes(self.path)}
    try:
      index = json.loads(self.path.read_text())
      weight_map = index["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
      raise UserError(f"{self.path} is not a sharded-weights index (needs a 'weight_map'; {e})") from None
    shards = {}
    for key, file in weight_map.items():
      shard = self.folder / file
      if not shard.is_file():
        raise UserError(f"{self.path} names shard {file}, which is not in {self.folder}")
      shards[key] = shard
    return shards

  def _file_shapes(self, path: Path) -> dict[str, tuple[int, ...]]:
    if path.suffix == ".safetensors":
      from safetensors import safe_open

      try:
        with safe_open(str(path), framework="numpy") as f:
          return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
      except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for corrupt headers
        raise UserError(f"cannot read {path}: {e}") from None
    return {k: tuple(v.shape) for k, v in _torch_load(path).items()}

  def shapes(self) -> dict[str, tuple[int, ...]]:
    """{tensor key: shape}, read without loading tensors; a key missing from its shard is a UserError."""
    out = {}
    for shard in dict.fromkeys(self.shards.values()):
      out.update({k: v for k, v in self._file_shapes(shard).items() if self.shards.get(k) == shard})
    missing = sorted(set(self.shards) - set(out))
    if missing:
      raise UserError(f"{self.path} maps {missing[0]!r} to {self.shards[missing[0]].name}, which lacks it")
    return out

  def tensors(self, keys=None) -> Iterator[tuple[str, np.ndarray]]:
    """(key, float32 array) for `keys` (default: all), one shard file open at a time."""
    wanted = list(self.shards) if keys is None else list(keys)
    by_file: dict[Path, list[str]] = {}
    for k in wanted:
      by_file.setdefault(self.shards[k], []).append(k)
    for path, ks in by_file.items():
      if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
          with safe_open(str(path), framework="numpy") as f:
            for k in ks:
              yield k, np.asarray(f.get_tensor(k), np.float32)
        except TypeError as e:  # e.g. bfloat16, which numpy cannot hold
          raise UserError(f"cannot read {path} with numpy ({e}); save it as float32 or float16") from None
      else:
        state = _torch_load(path)
        for k in ks:
          yield k, state[k].float().numpy()
        del state

  def load(self) -> dict[str, np.ndarray]:
    return dict(self.tensors())
