"""`python -m unclip_jax.bench NAME ...`: dispatches to `unclip_jax.bench.NAME.main(argv)`."""

from __future__ import annotations

import importlib
import sys

from unclip_jax import xla_flags
from unclip_jax.errors import UserError, check_writable, run_cli

BENCHMARKS = {
    "sampler": "unclip_jax.bench.sampler",  # the lax.scan samplers: compile time, ms/step, known-answer error
    "train": "unclip_jax.bench.train",      # one stage's train step: per-device memory (XLA) and steps/s
    "pipeline": "unclip_jax.bench.pipeline",  # text -> image with random weights: compile, s/image, peak memory
    "peers": "unclip_jax.bench.peers",      # ours vs PyTorch (open_clip, diffusers), same architectures and weights
    "mfu": "unclip_jax.bench.mfu",          # each stage's train step: XLA FLOPs over the measured matmul peak
    "scaling": "unclip_jax.bench.scaling",  # a train step's throughput on 1, 2, 4, 8 devices
    "profile": "unclip_jax.bench.profile",  # one train step's op time by kind (convolutions, matmuls, collectives...)
}


def _flag_value(argv, flag: str) -> str | None:
  """The value given to `flag` ("--json F" or "--json=F"), or None."""
  for i, arg in enumerate(argv):
    if arg == flag and i + 1 < len(argv):
      return argv[i + 1]
    if arg.startswith(flag + "="):
      return arg[len(flag) + 1:]
  return None


def main(argv):
  if not argv or argv[0] in ("-h", "--help"):
    print("usage: python -m unclip_jax.bench {" + ",".join(BENCHMARKS) + "} [--help]")
    return 0 if argv else 2
  if argv[0] not in BENCHMARKS:
    raise UserError(f"unknown benchmark {argv[0]!r}; choose one of: {', '.join(BENCHMARKS)}")
  json_out = _flag_value(argv[1:], "--json")
  if json_out:  # every benchmark's --json: refused before the (slow) measurement, not after it
    check_writable(json_out, "--json")
  xla_flags.apply_defaults()  # the CLIs' XLA CPU defaults, unless XLA_FLAGS is set (before JAX starts)
  return importlib.import_module(BENCHMARKS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
  run_cli(main, sys.argv[1:])
