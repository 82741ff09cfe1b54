"""`python -m unclip_jax.bench train --config configs/decoder.py:karlo [...]`: one stage's train step.

Two measurements, no dataset needed (shapes come from the config):
  * memory: the pmapped train step is lowered and compiled for the local devices from abstract shapes
    (nothing is allocated) and XLA's `memory_analysis()` gives the per-device bytes of arguments,
    outputs and temporaries, with the optimizer replicated or sharded (`--shard_optimizer`);
  * speed (`--steps N`): random parameters and batches, N steps after two warm-ups, each timed on its own
    (read back before the next starts, as the trainer runs on CPU): steps/s from the median step, and the
    10th-90th percentile spread. Medians because a shared machine drifts: on this project's 2-core VM the
    same command gave 1.56 and then 1.31-1.34 steps/s (mean of 30 steps) twenty minutes apart.
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from unclip_jax.bench.mfu import random_batch
from unclip_jax.errors import ArgumentParser, UserError
from unclip_jax.io import write_text_atomic

GIB = 1024 ** 3


def _parse(argv):
  p = ArgumentParser(prog="python -m unclip_jax.bench train", description=__doc__.splitlines()[0])
  p.add_argument("--config", required=True, help="configs/STAGE.py:PRESET")
  p.add_argument("--per_device_batch", type=int, default=1)
  p.add_argument("--shard_optimizer", action="store_true", help="ZeRO-2: Adam moments and EMA split over devices")
  p.add_argument("--steps", type=int, default=0, help="also time this many train steps on random data")
  p.add_argument("--json", default=None, help="also write the results to this JSON file")
  return p.parse_known_args(argv)


def _abstract_state(stage, tx, config, layout, n_dev):
  from unclip_jax.train.state import TrainState

  params = jax.eval_shape(stage.init_params, jax.random.key(0))
  extra = stage.abstract_extra()
  use_ema = float(config.optim.ema_decay) > 0
  if layout is not None:
    shards = {
        "mu": jax.ShapeDtypeStruct((n_dev, layout.shard_size), jnp.float32),
        "nu": jax.ShapeDtypeStruct((n_dev, layout.shard_size), jnp.float32),
        "count": jax.ShapeDtypeStruct((n_dev,), jnp.int32)}
    if use_ema:
      shards["ema"] = jax.ShapeDtypeStruct((n_dev, layout.shard_size), jnp.float32)
    return TrainState(jax.ShapeDtypeStruct((), jnp.int32), params, shards, {}, extra)
  return jax.eval_shape(lambda p: TrainState.create(p, tx, ema=use_ema, extra=extra), params)


def main(argv) -> int:
  args, overrides = _parse(argv)
  from unclip_jax.train import config_loader, optim, zero
  from unclip_jax.train.loop import make_train_step
  from unclip_jax.train.stages import get_stage

  config = config_loader.apply_overrides(config_loader.load_config_file(args.config),
                                         [o[len("--config."):] for o in overrides if o.startswith("--config.")])
  if args.per_device_batch < 1 or args.steps < 0:
    raise UserError("--per_device_batch must be positive and --steps non-negative")
  stage = get_stage(config)
  devices = jax.local_devices()
  n_dev = len(devices)
  tx = optim.make_optimizer(config.optim, int(config.train.steps))
  params_shape = jax.eval_shape(stage.init_params, jax.random.key(0))
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params_shape))
  layout = zero.FlatLayout.of(params_shape, n_dev) if args.shard_optimizer else None
  state = _abstract_state(stage, tx, config, layout, n_dev)
  batch = {k: jax.ShapeDtypeStruct((n_dev,) + v.shape, v.dtype) for k, v in stage.batch_spec(args.per_device_batch).items()}
  p_step = make_train_step(stage, tx, config, devices, layout)
  print(f"{config.stage} {config.get('preset', '')}: {n_params:,} parameters, {n_dev} x {devices[0].device_kind}, "
        f"per-device batch {args.per_device_batch}, optimizer {'sharded' if layout else 'replicated'}", flush=True)
  start = time.perf_counter()
  compiled = p_step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  result = {"stage": config.stage, "preset": config.get("preset", ""), "parameters": n_params, "devices": n_dev,
            "device_kind": devices[0].device_kind, "per_device_batch": args.per_device_batch,
            "shard_optimizer": bool(layout), "compile_s": round(compile_s, 2)}
  if memory is not None:
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "alias_size_in_bytes",
              "generated_code_size_in_bytes")
    result.update({f: int(getattr(memory, f)) for f in fields if hasattr(memory, f)})
    peak = result.get("argument_size_in_bytes", 0) + result.get("output_size_in_bytes", 0) \
        + result.get("temp_size_in_bytes", 0) - result.get("alias_size_in_bytes", 0)
    result["peak_estimate_bytes"] = peak
    print(f"compile {compile_s:.1f} s; per device: arguments {result.get('argument_size_in_bytes', 0) / GIB:.2f} GiB, "
          f"outputs {result.get('output_size_in_bytes', 0) / GIB:.2f} GiB, temporaries "
          f"{result.get('temp_size_in_bytes', 0) / GIB:.2f} GiB, peak estimate {peak / GIB:.2f} GiB", flush=True)
  if args.steps:
    times = np.asarray(_time_steps(stage, tx, config, layout, p_step, devices, args))
    median, p10, p90 = (float(np.percentile(times, q)) for q in (50, 10, 90))
    result.update(steps_per_s=round(1.0 / median, 4), step_s_median=round(median, 5), step_s_p10=round(p10, 5),
                  step_s_p90=round(p90, 5), timed_steps=int(times.size))
    print(f"{result['steps_per_s']:.3f} steps/s ({args.per_device_batch * n_dev} examples per step; median of "
          f"{times.size} steps, {1 / p90:.3f}-{1 / p10:.3f} steps/s over the 10th-90th percentile)", flush=True)
  if args.json:
    write_text_atomic(args.json, json.dumps(result, indent=2))
  return 0


def _time_steps(stage, tx, config, layout, p_step, devices, args) -> list[float]:
  """Seconds of each of `args.steps` train steps (after two untimed ones), each read back before the next."""
  from unclip_jax.train import zero
  from unclip_jax.train.state import TrainState

  n_dev = len(devices)
  params = jax.jit(stage.init_params)(jax.random.key(0))
  extra = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), stage.abstract_extra())
  if layout is not None:
    state = TrainState(jnp.zeros((), jnp.int32), params, zero.init_shards(layout, params, config.optim.ema_decay > 0),
                       {}, extra)
  else:
    state = TrainState.create(params, tx, ema=config.optim.ema_decay > 0, extra=extra)
  batch = random_batch(stage.batch_spec(args.per_device_batch), n_dev, np.random.default_rng(0))
  state, metrics = p_step(state, batch)  # warm-up (compiles)
  jax.block_until_ready(metrics)
  state, metrics = p_step(state, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(args.steps):
    start = time.perf_counter()
    state, metrics = p_step(state, batch)
    jax.block_until_ready(metrics)  # one step in flight at a time, as the trainer runs on CPU
    times.append(time.perf_counter() - start)
  return times
