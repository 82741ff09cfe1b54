"""`python -m unclip_jax.data.prepare NAME --data_dir DIR`: writes a dataset as tfds array_record files.

TFDS builds into an `incomplete.*` folder and renames it when every split is written, so an interrupted
run leaves nothing a reader would pick up; it shows a progress bar per split. Preparing the same
dataset again reuses what is there.
"""

from __future__ import annotations

import argparse
import sys

from unclip_jax.errors import UserError, run_cli

DATASETS = ("shapes",)


def _parse(argv):
  p = argparse.ArgumentParser(prog="python -m unclip_jax.data.prepare", description=__doc__.splitlines()[0])
  p.add_argument("name", help=f"dataset: {', '.join(DATASETS)}")
  p.add_argument("--data_dir", required=True, help="root folder for prepared datasets")
  p.add_argument("--image_size", type=int, default=64, help="shapes: 64 or 32")
  p.add_argument("--train_size", type=int, default=50_000, help="shapes: examples in the train split")
  p.add_argument("--heldout_size", type=int, default=2_000, help="shapes: examples in the heldout split")
  p.add_argument("--seed", type=int, default=0, help="shapes: base seed of the generated set")
  return p.parse_args(argv)


def prepare_shapes(data_dir: str, image_size: int, train_size: int, heldout_size: int, seed: int = 0):
  """Builds `shapes/<image_size>` (or a custom-sized config) under `data_dir`; returns the builder."""
  from unclip_jax.data import builders

  if image_size not in (32, 64):
    raise UserError(f"--image_size must be 32 or 64 for shapes, got {image_size}")
  if train_size < 1 or heldout_size < 1:
    raise UserError("--train_size and --heldout_size must be positive")
  default = builders.ShapesConfig(name=str(image_size), image_size=image_size)
  if (train_size, heldout_size, seed) == (default.train_size, default.heldout_size, default.seed):
    config = default
  else:  # a sized variant gets its own folder, so two sizes never overwrite each other
    config = builders.ShapesConfig(name=f"{image_size}_n{train_size}_h{heldout_size}_s{seed}",
                                   image_size=image_size, train_size=train_size, heldout_size=heldout_size,
                                   seed=seed)
  builder = builders.Shapes(config=config, data_dir=data_dir, file_format=builders.FILE_FORMAT)
  builder.download_and_prepare()
  return builder


def main(argv) -> int:
  args = _parse(argv)
  if args.name not in DATASETS:
    raise UserError(f"unknown dataset {args.name!r}; choose one of: {', '.join(DATASETS)}")
  builder = prepare_shapes(args.data_dir, args.image_size, args.train_size, args.heldout_size, args.seed)
  splits = ", ".join(f"{k}: {v.num_examples}" for k, v in builder.info.splits.items())
  print(f"prepared {builder.data_dir} ({splits})")
  return 0


if __name__ == "__main__":
  run_cli(main, sys.argv[1:])
