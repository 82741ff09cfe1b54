"""`python -m unclip_jax.bench mfu`: each stage's train step, its FLOPs and its model FLOP utilisation.

    python -m unclip_jax.bench mfu [--preset cpu|tiny|karlo] [--stages clip,prior,decoder,sr_64_256] [--steps 5]

For every stage: the pmapped train step the trainer runs (`train.loop.make_train_step`, all local devices,
random weights and batches, metrics read back every step), its FLOPs per step from XLA's cost analysis of
the traced program (per device, times the devices; the compiled program's count misses cuDNN's
convolutions on a GPU), the median step time over `--steps` steps after warm-up, and MFU = achieved FLOP/s
÷ the matmul peak measured in the same run: a square matmul (2048 on a CPU, 8192 on an accelerator, in
the stage's compute dtype) pmapped over the same devices, best of 5; for bfloat16 on a chip with a known
datasheet peak (`DATASHEET_BF16`) also ÷ that peak, the usual MFU. A stage with `remat` counts its
recomputed forward too (`--remat off` leaves the model's own FLOPs). Each row also gives the compile time
and the device's peak memory where the backend reports it (JAX's peak since the process started: one
stage per process for each its own). Presets: `cpu` (the `bench peers` cpu-size models), `tiny`
(configs/*:tiny), `karlo` (Karlo's sizes; CLIP ViT-L/14). `--batch` sets every stage's global batch
(default: the preset's, below).
"""

from __future__ import annotations

import json
import time

import numpy as np

from unclip_jax.bench.memory import device_peak_bytes, gib
from unclip_jax.errors import ArgumentParser, UserError

STAGES = ("clip", "prior", "decoder", "sr_64_256")
# preset -> stage -> (config file argument, global batch); the cpu preset swaps in the bench-peers models
PRESETS = {
    "tiny": {"clip": ("tiny", 64), "prior": ("tiny", 32), "decoder": ("tiny", 16), "sr_64_256": ("tiny", 16)},
    "cpu": {"clip": ("vit_l14", 8), "prior": ("karlo", 32), "decoder": ("karlo", 8), "sr_64_256": ("karlo_64_256", 4)},
    "karlo": {"clip": ("vit_l14", 64), "prior": ("karlo", 64), "decoder": ("karlo", 8),
              "sr_64_256": ("karlo_64_256", 8)},
}
CONFIG_FILES = {"clip": "clip", "prior": "prior", "decoder": "decoder", "sr_64_256": "upsampler"}


def stage_config(stage: str, preset: str, batch: int | None, remat: str = "config"):
  """The stage's training config (repository configs/), with the cpu preset's models swapped in and
  `remat` "on"/"off" overriding the config's rematerialisation."""
  import ml_collections

  from unclip_jax.bench import peers
  from unclip_jax.train import config_loader

  arg, default_batch = PRESETS[preset][stage]
  path = peers.repo_configs() / f"{CONFIG_FILES[stage]}.py"
  config = config_loader.load_config_file(f"{path}:{arg}")
  if preset == "cpu":
    models = peers.our_model_configs(peers.size_spec("cpu"))
    if stage == "clip":
      config.model = ml_collections.ConfigDict(models["clip"].to_dict())
    else:
      model = models["upsampler" if stage.startswith("sr") else stage]
      config.model = ml_collections.ConfigDict(dict(model, dtype="float32", remat=False))
  config.train.batch_size = batch or default_batch
  if remat != "config" and "remat" in config.model:
    config.model.remat = remat == "on"
  return config


def random_batch(batch_spec: dict, n_dev: int, rng) -> dict[str, np.ndarray]:
  """Host arrays (n_dev, per-device, ...) for a stage's `batch_spec`: images in [-1, 1], token ids, masks."""
  out = {}
  for k, s in batch_spec.items():
    shape = (n_dev,) + tuple(s.shape)
    if s.dtype == np.bool_:
      out[k] = np.ones(shape, bool)
    elif np.issubdtype(s.dtype, np.integer):
      out[k] = rng.integers(1, 1000, shape).astype(s.dtype)
    else:
      out[k] = np.clip(rng.normal(size=shape), -1, 1).astype(s.dtype)
  return out


class StepRunner:
  """A stage's pmapped train step on random weights and batches, compiled once; `__call__` runs one step
  as the trainer does (metrics read back)."""

  def __init__(self, config, devices, seed: int = 0):
    import jax

    from unclip_jax.train import loop, optim
    from unclip_jax.train.stages import get_stage
    from unclip_jax.train.state import TrainState

    self.stage = stage = get_stage(config)
    self.n_dev = n = len(devices)
    global_batch = int(config.train.batch_size)
    if global_batch % n:
      raise UserError(f"{config.stage}: batch {global_batch} does not split over {n} devices")
    tx = optim.make_optimizer(config.optim, int(config.train.steps))
    params = _random_params(stage, seed)
    extra = jax.tree.map(lambda s: np.ones(s.shape, s.dtype), stage.abstract_extra())
    state = TrainState.create(params, tx, ema=float(config.optim.ema_decay) > 0, extra=extra)
    mesh = jax.sharding.Mesh(np.asarray(devices), ("data",))
    self.state = jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    self.batch = random_batch(stage.batch_spec(global_batch // n), n, np.random.default_rng(seed))
    self.step = loop.make_train_step(stage, tx, config, devices)
    self.host_value = loop.host_value
    self.parameters = int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
    self.lowered = self.step.lower(self.state, self.batch)
    start = time.perf_counter()
    self.compiled = self.lowered.compile()  # run below too: one compile, timed
    self.compile_s = time.perf_counter() - start

  def model_flops(self) -> float:
    """FLOPs of one step on all devices, counted on the traced program before the backend rewrites it
    (the per-device count times the devices). The compiled program's own count is no substitute on a
    GPU: there the convolutions become cuDNN calls that XLA's cost analysis does not count (the Karlo
    decoder's train step at batch 64: 6.3 TFLOP compiled against 112 TFLOP traced)."""
    return _flops(self.lowered.cost_analysis()) * self.n_dev

  def backend_flops(self) -> float:
    """The compiled program's FLOPs as the backend's cost analysis counts them (all devices)."""
    return _flops(self.compiled.cost_analysis()) * self.n_dev

  def __call__(self):
    self.state, metrics = self.compiled(self.state, self.batch)
    return {k: float(self.host_value(v)) for k, v in metrics.items()}

  def time_steps(self, steps: int) -> list[float]:
    self()  # warm-up (first transfers, autotuning)
    self()
    times = []
    for _ in range(steps):
      start = time.perf_counter()
      self()
      times.append(time.perf_counter() - start)
    return times


def _flops(cost) -> float:
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float((cost or {}).get("flops", 0.0))


# Dense bfloat16 matmul peaks from the vendors' datasheets (FLOP/s per chip), by a fragment of the JAX
# device_kind: the denominator of the usual MFU. The matmul this benchmark measures is the other one.
DATASHEET_BF16 = (("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("TPU v6 lite", 918e12),
                  ("TPU v5 lite", 197e12), ("TPU v5", 459e12), ("TPU v4", 275e12))


def datasheet_peak(device_kind: str, dtype: str) -> float | None:
  """The datasheet's dense bf16 FLOP/s of one `device_kind` chip, or None (other dtypes, unknown chips)."""
  if dtype != "bfloat16":
    return None
  return next((peak for name, peak in DATASHEET_BF16 if name.lower() in device_kind.lower()), None)


def _random_params(stage, seed: int):
  """Random float32 parameters of the stage's shapes, filled on the host (no init compile)."""
  import jax

  abstract = jax.eval_shape(stage.init_params, jax.random.key(0))
  rng = np.random.default_rng(seed)
  flat, treedef = jax.tree_util.tree_flatten_with_path(abstract)
  leaves = []
  for path, leaf in flat:
    name = str(getattr(path[-1], "key", path[-1]))
    if name in ("scale",):
      leaves.append(np.ones(leaf.shape, np.float32))
    elif name == "bias" or not leaf.shape:
      leaves.append(np.zeros(leaf.shape, np.float32))
    else:
      fan_in = int(np.prod(leaf.shape[:-1])) or 1
      leaves.append((rng.standard_normal(leaf.shape, np.float32) / np.sqrt(fan_in)).astype(np.float32))
  return jax.tree_util.tree_unflatten(treedef, leaves)


def matmul_operand(k: int, n: int, dtype: str):
  """k random n×n matrices of unit-scale products, in `dtype` (scaled in float32 and cast after: a numpy
  scalar would promote bfloat16 to float32, and the probe would time float32 (TF32 on a GPU) matmuls)."""
  import jax
  import jax.numpy as jnp

  return (jax.random.normal(jax.random.key(0), (k, n, n), jnp.float32) / np.sqrt(n)).astype(dtype)


def matmul_peak(devices, dtype: str = "float32", n: int | None = None, repeats: int = 5) -> float:
  """FLOP/s of an n×n matmul pmapped over `devices` (all running at once), best of `repeats` timings of
  `calls` products each. n defaults to 2048 on a CPU and 8192 on an accelerator, where a 2048 product
  takes tens of microseconds and the launch would be timed instead of the matmul units."""
  import jax

  accelerator = devices[0].platform != "cpu"
  n = n or (8192 if accelerator else 2048)
  calls = 10 if accelerator else 1
  k = len(devices)
  mesh = jax.sharding.Mesh(np.asarray(devices), ("d",))
  x = jax.device_put(matmul_operand(k, n, dtype), jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d")))
  f = jax.pmap(lambda a: a @ a, devices=devices)
  jax.block_until_ready(f(x))
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready([f(x) for _ in range(calls)])
    best = min(best, (time.perf_counter() - start) / calls)
  return 2.0 * n ** 3 * k / best


def run(preset: str, stages, steps: int, batch: int | None, log=print, remat: str = "config") -> dict:
  import jax

  devices = jax.local_devices()
  results, peaks = [], {}
  for name in stages:
    config = stage_config(name, preset, batch, remat)
    dtype = str(config.model.get("dtype", "float32"))
    runner = StepRunner(config, devices)
    flops = runner.model_flops()
    times = runner.time_steps(steps)
    if dtype not in peaks:
      peaks[dtype] = matmul_peak(devices, dtype)
    step_s = float(np.median(times))
    achieved = flops / step_s
    sheet = datasheet_peak(devices[0].device_kind, dtype)
    sheet = sheet * len(devices) if sheet else None
    row = {"stage": name, "parameters": runner.parameters, "global_batch": int(config.train.batch_size),
           "dtype": dtype, "remat": bool(config.model.get("remat", False)), "compile_s": round(runner.compile_s, 2),
           "step_s": float(f"{step_s:.6g}"), "flops_per_step": flops, "backend_flops_per_step": runner.backend_flops(),
           "achieved_flops": achieved, "peak_flops": peaks[dtype], "mfu": achieved / peaks[dtype],
           "datasheet_peak_flops": sheet, "mfu_datasheet": achieved / sheet if sheet else None,
           "peak_bytes": device_peak_bytes()}
    versus = f", {100 * row['mfu_datasheet']:.1f}% of the datasheet's" if sheet else ""
    log(f"{name:10s} {runner.parameters:>13,d} params  batch {row['global_batch']:4d}  {step_s:8.4f} s/step  "
        f"{flops / 1e9:10.1f} GFLOP/step  {achieved / 1e9:8.1f} GFLOP/s  peak {peaks[dtype] / 1e9:8.1f}  "
        f"MFU {100 * row['mfu']:5.1f}%{versus}  (compile {runner.compile_s:.1f} s, "
        f"peak memory {gib(row['peak_bytes'])})")
    results.append(row)
    del runner
  return {"benchmark": "mfu", "preset": preset, "devices": len(devices), "device_kind": devices[0].device_kind,
          "backend": jax.default_backend(), "jax": jax.__version__, "results": results}


def _parse(argv):
  p = ArgumentParser(prog="python -m unclip_jax.bench mfu", description=__doc__.splitlines()[0])
  p.add_argument("--preset", default="cpu", choices=tuple(PRESETS))
  p.add_argument("--stages", default=",".join(STAGES), help="comma-separated: " + ", ".join(STAGES))
  p.add_argument("--steps", type=int, default=5, help="timed steps after warm-up (median reported)")
  p.add_argument("--batch", type=int, default=None, help="global batch of every stage (default: the preset's)")
  p.add_argument("--remat", default="config", choices=("config", "on", "off"),
                 help="rematerialisation: as the stage config says (karlo: on), or forced on / off")
  p.add_argument("--json", default=None, help="also write the results to this JSON file")
  return p.parse_args(argv)


def main(argv) -> int:
  args = _parse(list(argv))
  stages = [s.strip() for s in args.stages.split(",") if s.strip()]
  if not stages or any(s not in STAGES for s in stages):
    raise UserError(f"--stages must name some of {', '.join(STAGES)}, got {args.stages!r}")
  if args.steps < 1 or (args.batch is not None and args.batch < 1):
    raise UserError("--steps and --batch must be positive")
  report = run(args.preset, stages, args.steps, args.batch, remat=args.remat)
  if args.json:
    from unclip_jax.io import write_text_atomic

    write_text_atomic(args.json, json.dumps(report, indent=2))
  return 0
