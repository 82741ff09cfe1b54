"""`python -m unclip_jax.train --config configs/STAGE.py:PRESET --workdir DIR [--data_dir D] [--config.a.b=V]`.

Trains one stage (clip, prior, decoder, sr_64_256, sr_256_1024) on all local devices, resuming from the
latest checkpoint in DIR. Writes DIR/checkpoints (orbax), DIR/metrics.jsonl, DIR/tensorboard,
DIR/samples (image grids, for stages that draw images) and, at the end, DIR/export (the stage checkpoint
that sampling and the next stages load). Ctrl-C or SIGTERM saves the current step and exits.

In a multi-process job (launch/) each process runs the training in a child (`train.supervisor`), so that
even a C++ abort of JAX's coordination client ends with our line naming the lost process and the
checkpoint to resume from (exit status 3); rerunning the same command resumes from that checkpoint.
"""

from __future__ import annotations

import sys

from unclip_jax import xla_flags
from unclip_jax.errors import ArgumentParser, check_writable, run_cli


def main(argv) -> int:
  overrides = [a[len("--config."):] for a in argv if a.startswith("--config.")]
  rest = [a for a in argv if not a.startswith("--config.")]
  parser = ArgumentParser(prog="python -m unclip_jax.train", description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True, help="configs/STAGE.py:PRESET")
  parser.add_argument("--workdir", required=True, help="run folder: checkpoints, metrics, samples, export")
  parser.add_argument("--data_dir", default=None, help="prepared datasets root (sets config.data.data_dir)")
  parser.add_argument("--no_progress", action="store_true", help="no progress bar (logs still go to the workdir)")
  args = parser.parse_args(rest)
  check_writable(args.workdir, "--workdir")
  xla_flags.apply_defaults()  # XLA CPU defaults unless XLA_FLAGS is set; before JAX starts (README "Benchmarks")
  xla_flags.enable_compile_cache()  # compiled programs kept between runs (README "Benchmarks")

  from unclip_jax import distributed
  from unclip_jax.train import supervisor

  multi, index, count = distributed.requested()
  if multi and not supervisor.is_child():
    return supervisor.run(list(argv), args.workdir, index, count)
  if supervisor.is_child():
    supervisor.die_with_parent()
  from unclip_jax.train import config_loader, loop  # heavy imports after argument checks

  distributed.initialize_from_env()  # a multi-process job, when a launcher in launch/ asked for one
  config = config_loader.load_config_file(args.config)
  config = config_loader.apply_overrides(config, overrides)
  if args.data_dir:
    config.data.data_dir = args.data_dir
  try:
    result = loop.train(config, args.workdir, progress=not args.no_progress)
    distributed.finish()
  except loop.TrainingDiverged as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    print("interrupted; the last saved checkpoint is kept", file=sys.stderr)
    return 130
  state = "stopped (resume with the same command)" if result.stopped_early else "finished"
  print(f"{state} at step {result.final_step} in {args.workdir}")
  return 0


if __name__ == "__main__":
  run_cli(main, sys.argv[1:])
