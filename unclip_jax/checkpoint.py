"""Stage checkpoints: a folder any stage (CLIP, prior, decoder, upsampler) is exported to and loaded from.

Layout (docs/architecture.md, "Folder formats"):
    DIR/stage.json   {"kind": "clip" | "prior" | "decoder" | "upsampler", "config": {...}, "format": 1, ...}
    DIR/params/      an orbax StandardCheckpointer tree of the parameters (float32 at rest)

Loading needs no Python config file: `stage.json` holds the model config. Writes are atomic: the folder is
built under a temporary name beside the target and renamed into place, so a crash never leaves a
half-written checkpoint where a reader would find it. Training runs keep their own orbax
`CheckpointManager` (optimizer state, EMA, data iterator); this module is the exported, shareable form.
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
               extra: Mapping[str, Any] | None = None, overwrite: bool = False) -> Path:
  """Writes `params` and `config` as a stage checkpoint at `directory`, atomically.

  `config` must be JSON-serialisable (use `ConfigDict.to_dict()`). With `overwrite=False` an existing
  folder is an error, so a converter can never clobber a checkpoint by accident.
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
    ckptr = _checkpointer()
    ckptr.save(staging / PARAMS_DIR, host_params)
    ckptr.wait_until_finished()
    meta = {"kind": kind, "format": FORMAT_VERSION, "config": dict(config), **dict(extra or {})}
    (staging / STAGE_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=_json_default))
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
  `stage.json`. Any missing, extra or mis-shaped array is reported by its path before anything is read.
  """
  read_stage(directory, kind=kind)
  params_dir = Path(directory).absolute() / PARAMS_DIR
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
  return ckptr.restore(params_dir, target)
