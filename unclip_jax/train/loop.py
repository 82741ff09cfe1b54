"""The training loop all stages share: data → per-device step under `jax.pmap` → metrics, checkpoints.

The step is written once, per device: the loss on the device's slice of the batch, gradients averaged
with `pmean` over the device axis, one optimizer update. The train state enters and leaves replicated
(`in_axes=None`, `out_axes=None`), so no replicate/unreplicate round trips are needed.

Each step's metrics are read back to the host, where the NaN guard checks the loss. On CPU every step is
waited for before the next is dispatched, which also avoids a deadlock of XLA's collectives when several
multi-device steps are in flight. On GPU/TPU the next step is dispatched before the current one's metrics
are read (`one_step_in_flight`), so the accelerator never idles while the host logs; around checkpoints,
samples and the last step nothing is dispatched ahead, so the state saved is the state read. The step
donates its input state (one copy of it per device, not two), so a stop that arrives while a step is in
flight lets that step finish and saves its state: the step before it no longer exists to be saved.

Stopping early (SIGTERM, Ctrl-C, `train.max_seconds`) is voted on inside the step: each process sends
whether it wants to stop with its batch (`STOP_VOTE`), the step returns the `pmax` of the votes, and every
process reads that same answer with the step's metrics. So in a multi-process job a signal that reaches
one process (or reaches them at different steps) stops all of them after the same step, where they save
one checkpoint together, instead of one saving while the others wait in the next step's collectives.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from unclip_jax import checkpoint as stage_checkpoint
from unclip_jax import distributed
from unclip_jax import images as image_io
from unclip_jax.data import pipeline
from unclip_jax.errors import UserError
from unclip_jax.train import optim, zero
from unclip_jax.train.checkpoints import RunCheckpoints, describe_latest_on_disk, load_initial_weights
from unclip_jax.train.metrics import MetricsWriter
from unclip_jax.train.stages import get_stage
from unclip_jax.train.stages.base import AXIS, TIMESTEP_LOSSES, device_arrays, record_timestep_losses
from unclip_jax.train.state import INIT_STREAM, SAMPLES_STREAM, TrainState, step_key
from unclip_jax.train.watchdog import PeerWatchdog


STOP_VOTE = "stop_vote"  # batch key and metric: this process asks to stop (1) or not (0); the step returns the max


class TrainingDiverged(RuntimeError):
  """The loss or gradient norm became NaN/Inf; the last good checkpoint is kept."""


@dataclasses.dataclass
class RunResult:
  start_step: int
  final_step: int
  stopped_early: bool
  state: Any


def make_train_step(stage, tx: optax.GradientTransformation, config, devices, layout=None):
  """The pmapped train step: (replicated state, per-device batches) → (replicated state, metrics).

  With a `zero.FlatLayout` the optimizer state and EMA are per-device slices (`opt_state` mapped over
  the device axis) and the update is `zero.sharded_update`; everything else stays replicated.
  """
  seed, ema_decay = int(config.seed), float(config.optim.ema_decay)
  accum = max(1, int(config.optim.get("accum_steps", 1)))  # loop steps are micro-batches
  schedule = optim.learning_rate_schedule(config.optim, max(1, int(config.train.steps) // accum))

  def per_device_step(state: TrainState, batch):
    batch = dict(batch)
    vote = batch.pop(STOP_VOTE, None)  # the loop's stop vote, one per example row; not model input
    rng = jax.random.fold_in(step_key(seed, state.step), jax.lax.axis_index(AXIS))
    (_, metrics), grads = jax.value_and_grad(stage.loss, has_aux=True)(state.params, state.extra, batch, rng)
    timestep_losses = metrics.pop(TIMESTEP_LOSSES, None)
    metrics = jax.lax.pmean(metrics, AXIS)
    metrics["lr"] = schedule(state.step // accum)
    if vote is not None:
      metrics[STOP_VOTE] = jax.lax.pmax(jnp.max(vote), AXIS)  # any process asking stops every process
    if layout is not None:
      params, shard, metrics["grad_norm"] = zero.sharded_update(layout, config.optim, config.train.steps,
                                                                 state.params, grads, state.opt_state, AXIS)
      new = state.replace(step=state.step + 1, params=stage.postprocess(params), opt_state=shard)
    else:
      grads = jax.lax.pmean(grads, AXIS)
      metrics["grad_norm"] = optax.tree.norm(grads)
      new = state.apply_gradients(grads, tx, ema_decay, stage.postprocess)
    if timestep_losses is not None:  # importance sampling: the loss history sees the global batch
      new = new.replace(extra=record_timestep_losses(new.extra, timestep_losses))
    return new, metrics

  state_axes = TrainState(step=None, params=None, opt_state=0 if layout is not None else None, ema_params=None,
                          extra=None)
  # The state is donated: XLA writes the new state into the old one's buffers, so a device holds one copy
  # of the parameters, optimizer state and EMA, not two (the Karlo decoder: 14 GB less per device).
  return jax.pmap(per_device_step, axis_name=AXIS, in_axes=(state_axes, 0), out_axes=(state_axes, None),
                  devices=devices, donate_argnums=(0,))


def one_step_in_flight() -> bool:
  """Whether the loop dispatches step k+1 before reading step k's metrics: on GPU/TPU, not on CPU."""
  return jax.default_backend() != "cpu"


def _shard(batch: dict[str, np.ndarray], n_devices: int) -> dict[str, np.ndarray]:
  return {k: v.reshape((n_devices, v.shape[0] // n_devices) + v.shape[1:]) for k, v in batch.items()}


def _with_vote(batch: dict[str, np.ndarray], stop: bool) -> dict[str, np.ndarray]:
  """The step's input: the batch's numeric arrays and this process's stop vote, one entry per row."""
  arrays = device_arrays(batch)
  rows = next(iter(arrays.values())).shape[0]
  return {**arrays, STOP_VOTE: np.full((rows,), float(stop), np.float32)}


class _Deadline:
  """`train.max_seconds` of wall time for this invocation (0: none): once it has passed, this process
  votes to stop, so the run saves and ends as a preemption would, and the same command resumes it."""

  def __init__(self, max_seconds: float):
    if not max_seconds >= 0:
      raise UserError(f"train.max_seconds must be 0 (no limit) or a positive number of seconds, got {max_seconds}")
    self.max_seconds = max_seconds
    self.end = time.monotonic() + max_seconds if max_seconds else None

  def passed(self) -> bool:
    return self.end is not None and time.monotonic() >= self.end


class _Preemption:
  """Turns SIGTERM and Ctrl-C (SIGINT) into a flag the loop checks after each step: it then saves that
  step and exits cleanly. A second Ctrl-C aborts at once (KeyboardInterrupt), saving nothing more."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.requested: str | None = None
    self._previous: dict = {}

  def __enter__(self):
    for sig in self.SIGNALS:
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: leave signals alone
        break
    return self

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT and self.requested:
      raise KeyboardInterrupt
    self.requested = signal.Signals(signum).name
    if signum == signal.SIGINT:
      print("\nCtrl-C: saving after this step (press Ctrl-C again to abort without saving)", flush=True)

  def __exit__(self, *exc):
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)


def _devices(config):
  """The devices the step maps over: every device of every process in a multi-process job (each
  process feeds its local ones), else this process's (or the first `train.num_devices` of them)."""
  wanted = int(config.train.get("num_devices", 0) or 0)
  local = jax.local_devices()
  if wanted < 0 or wanted > len(local):
    raise UserError(f"train.num_devices={wanted} but this process has {len(local)} local devices")
  if jax.process_count() > 1:
    if wanted:
      raise UserError("train.num_devices cannot be set in a multi-process job: every device of every process is used")
    return jax.devices()
  return local[:wanted] if wanted else local


def _connect(devices) -> None:
  """One tiny collective over the step's devices, before compiling the step. On CPU, gloo connects the
  processes at the first collective over a device set and gives up after 30 s; compiling the step can
  take one process that much longer than another on a loaded host. Connected here, the step's first
  collective only waits."""
  ones = np.ones((len(devices) // jax.process_count(),), np.float32)
  total = jax.pmap(lambda x: jax.lax.psum(x, AXIS), axis_name=AXIS, devices=devices)(ones)
  host_value(total)


def _place(tree, sharding):
  """Host arrays (identical in every process) → global arrays with `sharding` (each process fills its
  own devices), as the step returns them; works in single- and multi-process runs alike."""
  return jax.tree.map(lambda x: jax.make_array_from_callback(np.shape(x), sharding, lambda i: np.asarray(x)[i]),
                      tree)


def _savable(state, replicated, split, n_devices: int):
  """In a multi-process job pmap returns host-local arrays; orbax saves global ones. The (identical)
  replicas are re-wrapped as one replicated global array; ZeRO slices (`opt_state` mapped over the
  devices; `split` is their sharding, None when the optimizer is replicated) as one array split over
  every device of every process, without leaving the devices."""
  if jax.process_count() == 1:
    return state

  def as_replicated(x):
    return jax.make_array_from_callback(x.shape, replicated, lambda i: host_value(x)[i])

  def as_split(x):
    if x.shape[0] == n_devices:  # already global (restored, not stepped since)
      return x
    return jax.make_array_from_single_device_arrays((n_devices,) + x.shape[1:], split,
                                                    [s.data for s in x.addressable_shards])
  fields = {f: jax.tree.map(as_replicated, getattr(state, f)) for f in ("step", "params", "ema_params", "extra")}
  fields["opt_state"] = jax.tree.map(as_replicated if split is None else as_split, state.opt_state)
  return TrainState(**fields)


def host_value(x) -> np.ndarray:
  """The value of a replicated global array, read from this process's first device."""
  return np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else np.asarray(x)


def train(config, workdir: str | Path, *, stop_after: int | None = None, progress: bool = True) -> RunResult:
  """Trains `config`'s stage in `workdir`, resuming from its latest checkpoint if there is one.

  `stop_after` ends the run after that many steps as a preemption would (save, then return); the
  next call resumes where it stopped. In a multi-process job a `PeerWatchdog` watches the other
  processes and the step progress throughout, and ends this process if one is lost or a step hangs.
  """
  if jax.process_count() == 1:
    return _train(config, Path(workdir), stop_after, progress, None)
  dog = PeerWatchdog(Path(workdir) / "heartbeat", jax.process_index(), jax.process_count(),
                     peer_timeout=float(config.train.get("peer_timeout_s", 20)),
                     step_timeout=float(config.train.get("step_timeout_s", 1800)),
                     last_checkpoint=lambda: describe_latest_on_disk(workdir)).start()
  try:
    result = _train(config, Path(workdir), stop_after, progress, dog)
    distributed.finish()  # leave the JAX job while still watched: a peer lost in the last sync is named too
  except (UserError, KeyboardInterrupt):  # the same mistake in every process, or the user stopping it
    dog.stop()
    raise
  except BaseException:  # e.g. a collective failed because a peer vanished: the watchdog tells which
    dog.await_verdict()
    raise
  dog.stop()
  return result


def _train(config, workdir: Path, stop_after: int | None, progress: bool, dog: PeerWatchdog | None) -> RunResult:
  stage = get_stage(config)
  devices = _devices(config)
  n_proc = jax.process_count()
  n_dev = len(devices) // n_proc  # devices this process feeds
  total_steps, global_batch = int(config.train.steps), int(config.train.batch_size)
  deadline = _Deadline(float(config.train.get("max_seconds", 0) or 0))
  if total_steps < 1:
    raise UserError(f"train.steps must be positive, got {total_steps}")
  if global_batch % (n_dev * n_proc):
    raise UserError(f"train.batch_size={global_batch} must be a multiple of the {n_dev * n_proc} devices")

  source = stage.source()
  loader = pipeline.make_loader(source, batch_size=global_batch // n_proc, seed=int(config.seed),
                                operations=stage.operations(), process_index=jax.process_index(),
                                process_count=n_proc)
  iterator = iter(loader)
  tx = optim.make_optimizer(config.optim, total_steps)

  checkpoints = RunCheckpoints(workdir, config, keep=int(config.train.get("keep_checkpoints", 3)))
  params, extra = stage.init(step_key(int(config.seed), INIT_STREAM))
  if config.train.get("init_from") and checkpoints.latest_step() is None:  # a resumed run has its own weights
    params, extra = load_initial_weights(stage, params, extra, config.train.init_from)
    print(f"started from the weights of {config.train.init_from}", flush=True)
  use_ema = float(config.optim.ema_decay) > 0
  layout = None
  if config.train.get("shard_optimizer", False):
    zero.check_supported(config.optim)
    layout = zero.FlatLayout.of(params, len(devices))  # one slice per device of every process
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=zero.init_shards(layout, params, use_ema),
                       ema_params={}, extra=extra)
  else:
    state = TrainState.create(params, tx, ema=use_ema, extra=extra)
  # Place the state as the step returns it (replicated over the device mesh; optimizer slices split
  # over it): the step then compiles once, and a multi-process job gets global arrays.
  mesh = jax.sharding.Mesh(np.asarray(devices), (AXIS,))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(AXIS))
  opt_split = split if layout is not None else None
  shardings = TrainState(step=replicated, params=replicated, ema_params=replicated, extra=replicated,
                         opt_state=split if layout is not None else replicated)
  start, restored, data_state = checkpoints.restore_latest(state, shardings)
  if start:
    state = restored
    if data_state is not None:
      iterator.set_state(data_state)
    print(f"resumed {workdir} at step {start}", flush=True)
    if (warning := checkpoints.schedule_warning()) is not None:
      print(warning, flush=True)
  else:
    state = TrainState(**{f: _place(getattr(state, f), getattr(shardings, f))
                          for f in ("step", "params", "opt_state", "ema_params", "extra")})
  last_saved = start

  if n_proc > 1:
    _connect(devices)
  p_step = make_train_step(stage, tx, config, devices, layout)
  writer = MetricsWriter(workdir, resume_step=start)
  log_every = max(1, int(config.train.get("log_every", 100)))
  ckpt_every = max(1, int(config.train.get("checkpoint_every", 1000)))
  sample_every = int(config.train.get("sample_every", 0) or 0)
  bar = None
  if progress and jax.process_index() == 0:
    from tqdm import tqdm

    bar = tqdm(total=total_steps, initial=start, desc=f"train {config.stage}", unit="step", dynamic_ncols=True)

  step, stopped_early, sample_batch = start, False, None
  window_start, window_steps = None, 0  # steps/s over the last logging window, compilation excluded
  in_flight = one_step_in_flight()
  queued = None  # the step dispatched ahead (its input state donated to it)
  voted_stop = False  # a step's metrics said some process asked to stop: the same answer in every process

  def wants_stop() -> str | None:  # this process's reason to stop, if any
    if preemption.requested:
      return preemption.requested
    return f"train.max_seconds={deadline.max_seconds:g} reached" if deadline.passed() else None

  def stopping() -> bool:  # alone, this process's wish decides at once; in a job, only the step's vote does
    return voted_stop or (n_proc == 1 and wants_stop() is not None)

  def dispatch_ahead(k: int) -> bool:  # may step k+1 start before step k is read? Not where step k's state is used.
    return (in_flight and k < total_steps and k % ckpt_every != 0 and not (sample_every and k % sample_every == 0)
            and not (stop_after is not None and k - start >= stop_after) and not stopping())

  with _Preemption() as preemption:
    try:
      while step < total_steps:
        if stop_after is not None and step - start >= stop_after:
          stopped_early = True
          break
        if queued is None:
          host = next(iterator)
          if sample_batch is None:
            stage.check_example({k: v[0] for k, v in host.items()})
            sample_batch = host
          queued = p_step(state, _shard(_with_vote(host, wants_stop() is not None), n_dev))
        (state, metrics), queued = queued, None
        step += 1
        if dispatch_ahead(step):
          queued = p_step(state, _shard(_with_vote(next(iterator), wants_stop() is not None), n_dev))
        metrics = {k: float(host_value(v)) for k, v in metrics.items()}
        voted_stop = voted_stop or metrics.pop(STOP_VOTE) > 0
        if dog is not None:
          dog.progress(step)
        if not (math.isfinite(metrics["loss"]) and math.isfinite(metrics["grad_norm"])):
          raise TrainingDiverged(f"non-finite loss ({metrics['loss']}) or gradient norm ({metrics['grad_norm']}) "
                                 f"at step {step}; stopped without saving it. The last good checkpoint "
                                 f"(step {last_saved}) is kept in {checkpoints.directory}")
        if window_start is None:
          window_start = time.perf_counter()
        else:
          window_steps += 1
        if step % log_every == 0 or step == total_steps:
          if window_steps:
            metrics["steps_per_s"] = window_steps / max(time.perf_counter() - window_start, 1e-9)
            window_start, window_steps = time.perf_counter(), 0
          writer.write(step, metrics)
        if bar is not None:
          bar.update(1)
          bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}")
        if step % ckpt_every == 0:
          checkpoints.save(step, _savable(state, replicated, opt_split, len(devices)), iterator.get_state())
          last_saved = step
        if sample_every and step % sample_every == 0:
          params_now = sampling_params(state, layout)  # every process: sharded EMA slices are gathered
          if jax.process_index() == 0:
            _write_samples(stage, state, params_now, sample_batch, workdir, step, int(config.seed), writer)
        if stopping() and queued is None:  # a step in flight is finished (and read) first
          stopped_early = True
          why = wants_stop() or "another process asked to stop"
          print(f"\n{why}: saving step {step} and exiting", flush=True)
          break
      if step != last_saved:
        checkpoints.save(step, _savable(state, replicated, opt_split, len(devices)), iterator.get_state())
      if step == total_steps and not stopped_early:
        export(stage, state, layout, workdir / "export", step)
    finally:
      if bar is not None:
        bar.close()
      checkpoints.close()
      writer.close()
  return RunResult(start_step=start, final_step=step, stopped_early=stopped_early, state=state)


def ema_params(state: TrainState, layout=None):
  """The EMA of the parameters on the host (gathered from its per-device slices if sharded), or None."""
  if layout is not None:
    if "ema" not in state.opt_state:
      return None
    from jax.experimental import multihost_utils

    slices = state.opt_state["ema"]
    if jax.process_count() > 1:
      slices = multihost_utils.process_allgather(slices, tiled=True)
    return zero.gather_ema(layout, {"ema": np.asarray(slices)})
  return jax.tree.map(host_value, state.ema_params) if state.ema_params else None


def sampling_params(state: TrainState, layout=None):
  """The parameters sampling uses (on the host): the EMA when the run keeps one."""
  ema = ema_params(state, layout)
  return jax.tree.map(host_value, state.params) if ema is None else ema


def export(stage, state: TrainState, layout, directory: Path, step: int) -> Path:
  """Writes the stage checkpoint that sampling and the next stages load.

  With an EMA the tree is {"params": online, "ema": EMA} and stage.json says `"ema": true` (the
  convention `unclip_jax.pipeline` reads); without one it is the model's tree itself.
  """
  extra = jax.tree.map(host_value, state.extra)
  kind, tree, model_config = stage.export(jax.tree.map(host_value, state.params), extra)
  ema = ema_params(state, layout)  # every process takes part in gathering sharded slices
  if ema is not None:
    tree = {"params": tree, "ema": stage.export(ema, extra)[1]}
  if jax.process_index() != 0:  # one writer: the folder is renamed into place atomically
    return directory
  return stage_checkpoint.save_stage(directory, tree, kind=kind, config=model_config, overwrite=True,
                                     extra={"step": int(step), "ema": ema is not None})


def _write_samples(stage, state, params, host_batch, workdir: Path, step: int, seed: int,
                   writer: MetricsWriter) -> None:
  """The stage's sample grid: WORKDIR/samples/step_N.png and TensorBoard's "samples" image."""
  images = stage.samples(params, state.extra, host_batch, step_key(seed, SAMPLES_STREAM))
  if images is not None:
    grid = image_io.make_grid(np.asarray(images))
    image_io.save_png(workdir / "samples" / f"step_{step:08d}.png", grid)
    writer.image("samples", grid, step)
