"""`python -m unclip_jax.bench scaling`: a stage's train-step throughput on 1, 2, 4, 8 devices.

    python -m unclip_jax.bench scaling [--config configs/decoder.py:tiny] [--devices 1,2,4,8] [--steps 10]

The trainer's pmapped step (random weights and batches, metrics read back every step) at a fixed global
batch (`--batch`, default the config's: strong scaling, the question "how should this host be split?"), or
with `--per-device-batch` at a fixed per-device batch (weak scaling). On a CPU host the devices are
virtual (`--xla_force_host_platform_device_count`), fixed when XLA starts, so each count runs in its own
process (the parent's other XLA_FLAGS kept); on GPUs/TPUs the first N local devices, counts above the
device count skipped. Reported: median step time and examples/s, and the speed-up over one device.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

import numpy as np

from unclip_jax.errors import ArgumentParser, UserError, positive_ints

DEVICE_FLAG = "--xla_force_host_platform_device_count"


def _parse(argv):
  p = ArgumentParser(prog="python -m unclip_jax.bench scaling", description=__doc__.splitlines()[0])
  p.add_argument("--config", default="configs/decoder.py:tiny", help="configs/STAGE.py:PRESET")
  p.add_argument("--devices", default="1,2,4,8", help="comma-separated device counts")
  p.add_argument("--steps", type=int, default=10, help="timed steps after warm-up (median reported)")
  p.add_argument("--batch", type=int, default=None, help="global batch (default: the config's train.batch_size)")
  p.add_argument("--per-device-batch", type=int, default=None, help="weak scaling: this many examples per device")
  p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)  # one count, in a child process
  p.add_argument("--json", default=None, help="also write the results to this JSON file")
  return p.parse_args(argv)


def measure(config_spec: str, n: int, steps: int, batch: int | None, per_device: int | None) -> dict:
  """One device count in this process: the step on the first `n` local devices."""
  import jax

  from unclip_jax.bench.mfu import StepRunner
  from unclip_jax.train import config_loader

  devices = jax.local_devices()[:n]
  config = config_loader.load_config_file(config_spec)
  config.train.batch_size = per_device * n if per_device else (batch or int(config.train.batch_size))
  runner = StepRunner(config, devices)  # compiles the step (runner.compile_s)
  times = runner.time_steps(steps)
  step_s = float(np.median(times))
  return {"devices": n, "global_batch": int(config.train.batch_size), "compile_s": round(runner.compile_s, 2),
          "step_s": round(step_s, 4), "examples_per_s": round(int(config.train.batch_size) / step_s, 2),
          "device_kind": devices[0].device_kind, "backend": jax.default_backend()}


def _worker_env(n: int) -> dict:
  env = dict(os.environ)
  flags = re.sub(rf"{DEVICE_FLAG}=\S+", "", env.get("XLA_FLAGS", "")).strip()
  env["XLA_FLAGS"] = f"{flags} {DEVICE_FLAG}={n}".strip()
  env.pop("JAX_NUM_CPU_DEVICES", None)
  return env


def _in_subprocess(args, n: int) -> dict:
  cmd = [sys.executable, "-m", "unclip_jax.bench", "scaling", "--worker", str(n), "--config", args.config,
         "--steps", str(args.steps)]
  if args.batch:
    cmd += ["--batch", str(args.batch)]
  if args.per_device_batch:
    cmd += ["--per-device-batch", str(args.per_device_batch)]
  proc = subprocess.run(cmd, env=_worker_env(n), capture_output=True, text=True)
  lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
  if proc.returncode or not lines:
    raise UserError(f"the {n}-device run failed:\n{proc.stderr[-2000:]}")
  return json.loads(lines[-1])


def main(argv) -> int:
  args = _parse(list(argv))
  if args.steps < 1:
    raise UserError("--steps must be positive")
  if args.worker is not None:
    print(json.dumps(measure(args.config, args.worker, args.steps, args.batch, args.per_device_batch)), flush=True)
    return 0
  counts = positive_ints(args.devices, "--devices")
  import jax

  cpu = jax.default_backend() == "cpu"
  available = len(jax.local_devices())
  rows = []
  for n in counts:
    if not cpu and n > available:
      print(f"{n} devices: skipped ({available} available)", flush=True)
      continue
    row = _in_subprocess(args, n) if cpu else measure(args.config, n, args.steps, args.batch, args.per_device_batch)
    rows.append(row)
    base = rows[0]["examples_per_s"]
    print(f"{n} device(s): batch {row['global_batch']:4d}  {row['step_s']:8.4f} s/step  "
          f"{row['examples_per_s']:9.2f} examples/s  x{row['examples_per_s'] / base:5.2f} vs {rows[0]['devices']}",
          flush=True)
  if args.json:
    from unclip_jax.io import write_text_atomic

    write_text_atomic(args.json, json.dumps({"benchmark": "scaling", "config": args.config, "results": rows},
                                            indent=2))
  return 0
