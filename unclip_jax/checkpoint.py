"""Stage checkpoints: a folder any stage (CLIP, prior, decoder, upsampler) is exported to and loaded from.

Layout (docs/architecture.md, "Folder formats"):
    DIR/stage.json   {"kind": "clip" | "prior" | "decoder" | "upsampler", "config": {...}, "format": 1, ...}
    DIR/params/      an orbax StandardCheckpointer tree of the parameters (float32 at rest)

Loading needs no Python config file: `stage.json` holds the model config. Writes are atomic: the folder is
built under a temporary name beside the target and renamed into place, so a crash never leaves a
half-written checkpoint where a reader would find it. `stage.json` also records a checksum of every array
(`tree_checksums`); loading verifies them, so a damaged file is named rather than silently loaded. Training
runs keep their own orbax `CheckpointManager` (optimizer state, EMA, data iterator); this module is the
exported, shareable form.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np

from unclip_jax.errors import UserError

FORMAT_VERSION = 1
STAGE_FILE = "stage.json"
PARAMS_DIR = "params"
KINDS = ("clip", "prior", "decoder", "upsampler")
CHECKSUMS = "checksums"  # stage.json: {array path: checksum} (`tree_checksums`)
FILES = "files"  # stage.json: {file under params/: [size, sha256]}


def _leaf_checksum(x, xp=None):
  """Two sums of an array's bits, mod 2^32 (a plain one plus the length, and a position-weighted one,
  Fletcher style): a changed or zeroed block changes them. Computed where the array lives: `xp` is
  jax.numpy (traced, on the array's devices) or numpy for a host array, first cast as jax would cast it
  (float64 to float32), so that both give the same sums without compiling a program for the tree's shapes."""
  import jax.numpy as jnp

  xp = xp or jnp
  if xp is np:
    x = np.asarray(x).astype(jax.dtypes.canonicalize_dtype(x.dtype), copy=False)
  x = xp.ravel(x)
  if x.dtype == np.bool_:
    x = x.astype(xp.uint8)
  width = {1: xp.uint8, 2: xp.uint16, 4: xp.uint32}[x.dtype.itemsize]
  bits = (x.view(width) if xp is np else jax.lax.bitcast_convert_type(x, width)).astype(xp.uint32)
  weights = (xp.arange(bits.size, dtype=xp.uint32) % xp.uint32(65521)) + xp.uint32(1)
  # sums kept as 1-element arrays: their uint32 arithmetic wraps silently in numpy too
  return xp.concatenate([xp.sum(bits, dtype=xp.uint32, keepdims=True) + xp.uint32(bits.size % (1 << 32)),
                         xp.sum(bits * weights, dtype=xp.uint32, keepdims=True)])


_checksums_jit = None


def tree_checksums(tree: Any) -> dict[str, str]:
  """{array path: 16 hex digits} for every array of `tree` (host or device, sharded or not). Host (numpy)
  arrays are summed in numpy, device arrays where they live, in one compiled program (loading the demo
  pipeline's four stages: 5 s of compiles before host arrays were summed on the host)."""
  global _checksums_jit
  if _checksums_jit is None:
    _checksums_jit = jax.jit(lambda leaves: [_leaf_checksum(x) for x in leaves])
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  on_host = [isinstance(x, (np.ndarray, np.generic)) for _, x in flat]
  device_sums = iter(_checksums_jit([x for (_, x), h in zip(flat, on_host) if not h]) if not all(on_host) else [])

  def host(s):  # in a multi-process job the (replicated) sums are global arrays: read this process's copy
    return np.asarray(s.addressable_data(0) if not s.is_fully_addressable else s)
  sums = [_leaf_checksum(x, np) if h else host(next(device_sums)) for (_, x), h in zip(flat, on_host)]
  return {jax.tree_util.keystr(p): "".join(f"{int(v):08x}" for v in s) for (p, _), s in zip(flat, sums)}


def file_digests(directory: Path) -> dict[str, list]:
  """{relative path: [size, sha256]} of every file under `directory`."""
  import hashlib

  out = {}
  for path in sorted(p for p in directory.rglob("*") if p.is_file()):
    h = hashlib.sha256()
    with path.open("rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
    out[path.relative_to(directory).as_posix()] = [path.stat().st_size, h.hexdigest()]
  return out


def _check_files(directory: Path, saved: Mapping[str, list], fix: str) -> None:
  """Each file recorded at save time is there, whole and unchanged (checked before orbax reads any)."""
  for rel, (size, digest) in saved.items():
    path = directory / rel
    if not path.is_file():
      raise UserError(f"stage checkpoint {directory.parent} is damaged: {path} is missing; {fix}")
    if path.stat().st_size != size:
      raise UserError(f"stage checkpoint {directory.parent} is damaged: {path} has {path.stat().st_size} bytes, "
                      f"{size} were saved (truncated?); {fix}")
  now = file_digests(directory)
  for rel, (_, digest) in saved.items():
    if now[rel][1] != digest:
      raise UserError(f"stage checkpoint {directory.parent} is damaged: {directory / rel} differs from the file "
                      f"saved; {fix}")


def first_mismatch(saved: Mapping[str, str], tree: Any) -> str | None:
  """The path of the first array of `tree` whose checksum differs from `saved` (None if all agree)."""
  now = tree_checksums(tree)
  return next((path for path, value in saved.items() if now.get(path) != value), None)


def _checkpointer():
  """A checkpointer for this process alone: stage checkpoints hold host arrays and are written or read
  by one process, so orbax must not wait for the other processes of a multi-process job."""
  import jax
  import orbax.checkpoint as ocp  # imported lazily: orbax is slow to import and most callers only read json

  if jax.process_count() == 1:
    return ocp.StandardCheckpointer()
  me = jax.process_index()
  return ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(
      primary_host=me, active_processes={me}, barrier_sync_key_prefix=f"stage_p{me}"))


def save_stage(directory: str | os.PathLike, params: Any, *, kind: str, config: Mapping[str, Any],
               extra: Mapping[str, Any] | None = None, overwrite: bool = False,
               storage_dtype: str | None = None) -> Path:
  """Writes `params` and `config` as a stage checkpoint at `directory`, atomically.

  `config` must be JSON-serialisable (use `ConfigDict.to_dict()`). With `overwrite=False` an existing
  folder is an error, so a converter can never clobber a checkpoint by accident. `storage_dtype`
  ("float16", "bfloat16") stores floating arrays in that type (shipped weights); loading casts them back
  to the model's float32.
  """
  if kind not in KINDS:
    raise ValueError(f"unknown stage kind {kind!r}; expected one of {', '.join(KINDS)}")
  target = Path(directory).absolute()
  if target.exists() and not overwrite:
    raise UserError(f"{target} already exists; choose another --out folder or remove it first")
  target.parent.mkdir(parents=True, exist_ok=True)
  staging = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
  try:
    staging.mkdir()
    host_params = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), params)
    if storage_dtype:
      store = jax.numpy.dtype(storage_dtype)
      host_params = jax.tree.map(lambda x: x.astype(store) if np.issubdtype(x.dtype, np.floating) else x, host_params)
      extra = {**dict(extra or {}), "storage_dtype": storage_dtype}
    ckptr = _checkpointer()
    ckptr.save(staging / PARAMS_DIR, host_params)
    ckptr.wait_until_finished()
    meta = {"kind": kind, "format": FORMAT_VERSION, "config": dict(config), **dict(extra or {}),
            CHECKSUMS: tree_checksums(host_params), FILES: file_digests(staging / PARAMS_DIR)}
    _write_meta(staging, meta)
    if target.exists():  # overwrite: swap the old folder out only once the new one is complete
      old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
      os.replace(target, old)
      os.replace(staging, target)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.replace(staging, target)
  finally:
    if staging.exists():
      shutil.rmtree(staging, ignore_errors=True)
  return target


def reuse_identical_params(new: str | os.PathLike, old: str | os.PathLike) -> bool:
  """If stage checkpoint `old` stores exactly the arrays of the just-written `new` (the same array paths,
  checksums and storage dtype, its files intact), puts a copy of old's params files in place of new's and
  returns True. orbax names its files at random, so without this a re-export of unchanged weights would
  still change every file (for shipped weights in git: a new copy of each blob)."""
  new, old = Path(new), Path(old)
  try:
    new_meta, old_meta = read_stage(new), read_stage(old)
    if (old_meta.get(CHECKSUMS) != new_meta.get(CHECKSUMS) or not old_meta.get(FILES)
        or old_meta.get("storage_dtype") != new_meta.get("storage_dtype")):
      return False
    _check_files(old / PARAMS_DIR, old_meta[FILES], "")
  except UserError:  # no such stage there, or damaged: write the new files
    return False
  staging = new / f".{PARAMS_DIR}.tmp-{uuid.uuid4().hex[:8]}"
  shutil.copytree(old / PARAMS_DIR, staging)
  shutil.rmtree(new / PARAMS_DIR)
  os.replace(staging, new / PARAMS_DIR)
  new_meta[FILES] = old_meta[FILES]
  _write_meta(new, new_meta)
  return True


def _write_meta(folder: Path, meta: Mapping[str, Any]) -> None:
  """stage.json of a folder still being built (its parent folder's rename makes it visible)."""
  (folder / STAGE_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=_json_default))


def _json_default(obj):
  if isinstance(obj, (np.integer, np.floating)):
    return obj.item()
  if isinstance(obj, (tuple, np.ndarray)):
    return list(obj)
  raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def read_stage(directory: str | os.PathLike, *, kind: str | None = None) -> dict[str, Any]:
  """Reads `stage.json`; a missing folder, a folder of another kind or a malformed file is a `UserError`."""
  path = Path(directory)
  if not path.is_dir():
    raise UserError(f"checkpoint folder {path} does not exist")
  meta_path = path / STAGE_FILE
  if not meta_path.is_file() or not (path / PARAMS_DIR).is_dir():
    raise UserError(f"{path} is not a unclip_jax stage checkpoint (no {STAGE_FILE} and {PARAMS_DIR}/ inside)")
  try:
    meta = json.loads(meta_path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise UserError(f"{meta_path} is not valid JSON ({e.msg if hasattr(e, 'msg') else e})") from None
  if not isinstance(meta, dict) or "kind" not in meta or "config" not in meta:
    raise UserError(f"{meta_path} lacks the 'kind' and 'config' fields of a stage checkpoint")
  if kind is not None and meta["kind"] != kind:
    raise UserError(f"{path} holds a {meta['kind']} checkpoint, but a {kind} checkpoint is needed here")
  return meta


def _flat_shapes(tree: Any) -> dict[str, tuple[tuple[int, ...], Any]]:
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {jax.tree_util.keystr(p): (tuple(getattr(x, "shape", ())), getattr(x, "dtype", None)) for p, x in flat}


def load_stage_params(directory: str | os.PathLike, abstract_params: Any, *, kind: str | None = None) -> Any:
  """Restores the parameters of a stage checkpoint into the structure of `abstract_params`.

  `abstract_params` is what `jax.eval_shape(model.init, ...)["params"]` gives for the config in
  `stage.json`. Any missing, extra or mis-shaped array is reported by its path before anything is read;
  unreadable files, and arrays that differ from the checksums saved with them, are a `UserError` naming
  the checkpoint and the array.
  """
  meta = read_stage(directory, kind=kind)
  params_dir = Path(directory).absolute() / PARAMS_DIR
  fix = "re-export or re-convert it, or copy it again from where it came from"
  _check_files(params_dir, meta.get(FILES) or {}, fix)
  ckptr = _checkpointer()
  stored = ckptr.metadata(params_dir).item_metadata
  stored_shapes = _flat_shapes(stored.tree if hasattr(stored, "tree") else stored)
  wanted_shapes = _flat_shapes(abstract_params)
  missing = sorted(set(wanted_shapes) - set(stored_shapes))
  extra = sorted(set(stored_shapes) - set(wanted_shapes))
  if missing or extra:
    what = (f"missing {missing[0]}" if missing else f"unexpected {extra[0]}")
    more = len(missing) + len(extra) - 1
    raise UserError(f"checkpoint {directory} does not match its config: {what}"
                    + (f" (and {more} more differences)" if more else ""))
  for path, (shape, _) in wanted_shapes.items():
    if stored_shapes[path][0] != shape:
      raise UserError(f"checkpoint {directory} does not match its config: {path} has shape "
                      f"{stored_shapes[path][0]}, the config needs {shape}")
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), abstract_params)
  try:
    params = ckptr.restore(params_dir, target)
  except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many types for damaged files
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    raise UserError(f"stage checkpoint {directory} is damaged: its arrays cannot be read ({type(e).__name__}: "
                    f"{first}); {fix}") from None
  stored_dtypes = {path: dtype for path, (_, dtype) in stored_shapes.items()}

  def as_stored(path, x):  # checksums were taken of the arrays as stored (e.g. float16 shipped weights)
    dtype = stored_dtypes.get(jax.tree_util.keystr(path))
    return x if dtype is None or np.dtype(dtype) == x.dtype else np.asarray(x).astype(dtype)
  bad = first_mismatch(meta.get(CHECKSUMS) or {}, jax.tree_util.tree_map_with_path(as_stored, params))
  if bad is not None:
    raise UserError(f"stage checkpoint {directory} is damaged: array {bad} does not match the checksum saved "
                    f"with it; {fix}")
  return params
