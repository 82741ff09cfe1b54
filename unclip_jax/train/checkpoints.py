"""Run checkpoints: an orbax `CheckpointManager` under `WORKDIR/checkpoints`, saved asynchronously.

Each step folder holds the train state (params, EMA, optimizer state, step, non-trained variables), the
data iterator's state, the run's config and a checksum of every array of the state. A run resumes from
the latest step automatically; a step whose arrays cannot be read or do not match their checksums is
skipped with a warning, for the previous complete one. A workdir
whose checkpoints were made by a different model, diffusion, optimizer, data or batch setting is refused
rather than silently mixed, and nothing in it is touched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from unclip_jax.checkpoint import first_mismatch, read_stage, tree_checksums
from unclip_jax.errors import UserError
from unclip_jax.pipeline.folder import load_stage_tree

# Fields that define a run: a checkpoint made with other values belongs to another run.
IDENTITY_PREFIXES = ("stage", "seed", "model", "diffusion", "optim", "data.name", "data.config",
                     "train.batch_size", "train.loss", "train.shard_optimizer", "train.init_from",
                     "train.hard_negatives", "train.image_hard_negatives", "train.near_misses")


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    path = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(_flatten(value, path + "."))
    else:
      out[path] = value
  return out


def _json_roundtrip(config: ml_collections.ConfigDict | dict) -> dict:
  tree = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config
  return json.loads(json.dumps(tree, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))


# Identity fields added after runs were already saved, with the value that reproduces those runs: a
# checkpoint without the field is the same run as a config holding that value.
ADDED_FIELDS = {"model.image_tower": True, "train.init_from": "", "train.hard_negatives": "",
                "train.image_hard_negatives": False, "train.near_misses": ""}


def config_differences(saved: dict, current: ml_collections.ConfigDict) -> list[str]:
  """The identity fields on which a saved config and the current one differ."""
  a, b = _flatten(_json_roundtrip(saved)), _flatten(_json_roundtrip(current))
  a.update({k: v for k, v in ADDED_FIELDS.items() if k not in a and k in b})
  keys = sorted(k for k in set(a) | set(b) if k.startswith(IDENTITY_PREFIXES))
  return [f"{k}: {a.get(k, '<absent>')!r} in the checkpoint, {b.get(k, '<absent>')!r} now"
          for k in keys if a.get(k) != b.get(k)]


def _every_process(data_state: bytes) -> list[str]:
  """Every process's data-iterator state, in process order (each process reads its own shard)."""
  if jax.process_count() == 1:
    return [data_state.decode("utf-8")]
  from jax.experimental import multihost_utils

  raw = np.frombuffer(data_state, np.uint8)
  lengths = np.asarray(multihost_utils.process_allgather(np.array([raw.size], np.int32))).reshape(-1)
  padded = np.zeros(int(lengths.max()), np.uint8)
  padded[:raw.size] = raw
  gathered = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(lengths), -1)
  return [bytes(gathered[i, :lengths[i]]).decode("utf-8") for i in range(len(lengths))]


def describe_latest_on_disk(workdir: str | Path) -> str:
  """"step N in DIR" for the newest finished step folder of a run, read from the disk itself (safe from
  any thread, even while a save is under way): orbax writes a step under a temporary name and renames it
  into place only when every process has written its part, so a save cut short is never listed."""
  directory = Path(workdir).absolute() / "checkpoints"
  try:
    steps = [int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir()]
  except OSError:
    steps = []
  return f"step {max(steps)} in {directory}" if steps else f"none yet in {directory} (the run restarts at step 0)"


class DamagedCheckpoint(Exception):
  """A run checkpoint whose files cannot be read or whose arrays differ from their saved checksums."""


def load_initial_weights(stage, params, extra, directory: str | Path):
  """(params, extra) of a new run taken from the stage checkpoint `directory` instead of the random init:
  fine-tuning converted weights, or continuing an exported or shipped (float16) model with a new optimizer
  and schedule. A checkpoint with an EMA gives its EMA copy, the weights sampling uses. A checkpoint of
  another stage or of another model size is a `UserError` naming the first difference."""
  kind, template, _ = stage.export(params, extra)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.dtype(x.dtype)), template)
  where = f"--config.train.init_from={directory}"
  try:
    meta = read_stage(directory, kind=kind)
    tree, _ = load_stage_tree(Path(directory), kind, meta, ema=True, log=lambda _: None, abstract=abstract)
  except UserError as e:
    message = str(e).replace("its config", "this run's config")
    raise UserError(f"{where}: {message}") from None
  return stage.from_export(tree, extra)


class RunCheckpoints:
  """Saves and restores a run's state in `workdir/checkpoints`."""

  def __init__(self, workdir: str | Path, config: ml_collections.ConfigDict, *, keep: int = 3):
    import orbax.checkpoint as ocp

    self._ocp = ocp
    self.directory = Path(workdir).absolute() / "checkpoints"
    self.config = config
    self.saved_config: dict | None = None  # the config the run's checkpoints were saved with, if any
    self.manager = ocp.CheckpointManager(
        # Handlers registered up front: a fresh manager reads the metadata of items it has not yet
        # restored (`_check_fits`), and restoring only some items does not warn about the others.
        self.directory, item_handlers={"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler(),
                                       "config": ocp.JsonCheckpointHandler(),
                                       "checksums": ocp.JsonCheckpointHandler()},
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=True))
    self._check_same_run()

  def _check_same_run(self) -> None:
    step = self.manager.latest_step()
    if step is None:
      return
    saved = self.manager.restore(step, args=self._ocp.args.Composite(config=self._ocp.args.JsonRestore()))["config"]
    self.saved_config = saved
    differences = config_differences(saved, self.config)
    if differences:
      raise UserError(f"{self.directory.parent} holds checkpoints of another run ({differences[0]}"
                      + (f"; {len(differences) - 1} more differences" if len(differences) > 1 else "")
                      + "); use a new --workdir")

  def schedule_warning(self) -> str | None:
    """A warning when a resumed run was started with another `train.steps`: the learning-rate schedule is
    built from it, so changing it moves the rate of every step still to come (allowed: extending a run)."""
    saved = _flatten(self.saved_config or {}).get("train.steps")  # restored JSON: a plain dict already
    now = int(self.config.train.steps)
    if saved is None or int(saved) == now:
      return None
    return (f"warning: this run was started with train.steps={saved} and resumes with {now}; the learning-rate "
            f"schedule now spans {now} steps, so the rate differs from the one the run was following "
            f"(pass --config.train.steps={saved} to keep it)")

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_state: bytes | None) -> None:
    """Starts an asynchronous save of `state` at `step`. Every process calls it (each writes what it
    holds); the data iterator state saved is this process's, restored to the same process index."""
    ocp = self._ocp
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave({"iterators": _every_process(data_state or b"")}),
        config=ocp.args.JsonSave(_json_roundtrip(self.config)),
        checksums=ocp.args.JsonSave(tree_checksums(state))), force=True)

  def restore_latest(self, abstract_state, shardings, log=print):
    """(step, state, data iterator state) of the latest step that reads back whole, or (0, None, None)
    for a new run. Damaged steps (unreadable, or arrays that differ from their saved checksums) are
    skipped with a warning naming them."""
    steps = sorted(self.manager.all_steps(), reverse=True)
    for i, step in enumerate(steps):
      try:
        return (step, *self.restore(step, abstract_state, shardings))
      except DamagedCheckpoint as e:
        aside = self._set_aside(step)
        after = f"resuming from step {steps[i + 1]}" if i + 1 < len(steps) else "no earlier checkpoint is left"
        log(f"warning: {e}; moved it to {aside.name}; {after}")
    if steps:
      raise UserError(f"every checkpoint in {self.directory} is damaged ({', '.join(map(str, steps))}); "
                      "remove the folder to start the run again, or restore it from a copy")
    return 0, None, None

  def restore(self, step: int, abstract_state, shardings):
    """(state, data iterator state or None) of `step`, shaped like `abstract_state` and placed with
    `shardings` (a pytree prefix of it: one sharding per field)."""
    ocp = self._ocp
    target = jax.tree.map(lambda s, x: jax.tree.map(lambda y: jax.ShapeDtypeStruct(np.shape(y), y.dtype, sharding=s), x),
                          shardings, abstract_state)
    self._check_fits(step, target)
    items = {"state": ocp.args.StandardRestore(target), "data": ocp.args.JsonRestore()}
    if (self.directory / str(step) / "checksums").exists():  # written by every save since checksums exist
      items["checksums"] = ocp.args.JsonRestore()
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many types for damaged files
      first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
      raise DamagedCheckpoint(f"the checkpoint at step {step} in {self.directory} cannot be read "
                              f"({type(e).__name__}: {first})") from None
    bad = first_mismatch(restored.get("checksums") or {}, restored["state"])
    if bad is not None:
      raise DamagedCheckpoint(f"the checkpoint at step {step} in {self.directory} is damaged: array {bad} "
                              "does not match the checksum saved with it")
    data = restored["data"]
    iterators = data["iterators"] if "iterators" in data else [data.get("iterator")]  # single-process format
    if len(iterators) != jax.process_count():
      raise UserError(f"the checkpoint at step {step} was made by {len(iterators)} process(es) reading their own "
                      f"data shards; this job has {jax.process_count()}: resume with the same process count")
    iterator = iterators[jax.process_index()]
    return restored["state"], (iterator.encode("utf-8") if iterator else None)

  def _set_aside(self, step: int) -> Path:
    """Renames a damaged step folder out of orbax's sight (kept for inspection; the run saves that step anew)."""
    aside = self.directory / f"{step}.damaged"
    if jax.process_index() == 0 and (self.directory / str(step)).exists():
      if aside.exists():
        shutil.rmtree(aside)
      os.replace(self.directory / str(step), aside)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices(f"unclip_jax_set_aside_{step}")
    self.manager.reload()
    return aside

  def _check_fits(self, step: int, target) -> None:
    """An array saved with another shape than `target`'s is a UserError: another layout (e.g. ZeRO slices
    for another device count), not damage."""
    try:
      meta = self.manager.item_metadata(step)
      stored = meta["state"]
    except Exception:  # noqa: BLE001 - no readable metadata: restoring will tell
      return
    if stored is None:
      return

    def shapes(tree):
      flat = jax.tree_util.tree_flatten_with_path(tree)[0]
      return {tuple(re.findall(r"\w+", jax.tree_util.keystr(p))): tuple(getattr(x, "shape", None) or ())
              for p, x in flat}
    have, want = shapes(stored), shapes(target)
    for path, shape in want.items():
      if path in have and have[path] != shape:
        raise UserError(f"the checkpoint at step {step} in {self.directory} does not fit this run (was the number "
                        f"of devices changed with train.shard_optimizer on?): {'.'.join(path)} has shape "
                        f"{have[path]} there, {shape} now")

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
