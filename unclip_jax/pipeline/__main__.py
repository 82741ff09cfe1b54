"""Build unCLIP pipeline folders.

    python -m unclip_jax.pipeline init-random --preset tiny --out DIR
    python -m unclip_jax.pipeline assemble --clip C --prior P --decoder D --sr-64-256 S [--sr-64-256-last L] --out DIR
"""

from __future__ import annotations

import sys
from typing import Sequence

from unclip_jax.errors import ArgumentParser, run_cli
from unclip_jax.pipeline.folder import REQUIRED, STAGE_KINDS, assemble
from unclip_jax.pipeline.random_weights import PRESETS, make_random_pipeline


def main(argv: Sequence[str]) -> int:
  parser = ArgumentParser(prog="python -m unclip_jax.pipeline", description="Build unCLIP pipeline folders.")
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser("init-random", help="write a pipeline folder with random weights (tests, smoke tests)")
  p.add_argument("--preset", default="tiny", choices=PRESETS)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", required=True)
  a = sub.add_parser("assemble", help="write pipeline.json for existing stage folders (e.g. converted Karlo)")
  for name in STAGE_KINDS:
    a.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None,
                   required=name in REQUIRED, help=f"{STAGE_KINDS[name]} stage folder")
  a.add_argument("--preset", default="karlo", choices=("karlo", "paper"), help="sampling defaults")
  a.add_argument("--out", required=True)
  args = parser.parse_args(list(argv))
  if args.command == "init-random":
    out = make_random_pipeline(args.out, args.preset, args.seed)
  else:
    out = assemble(args.out, {n: getattr(args, n) for n in STAGE_KINDS}, preset=args.preset)
  print(f"pipeline: {out}")
  return 0


if __name__ == "__main__":
  run_cli(main, sys.argv[1:])
