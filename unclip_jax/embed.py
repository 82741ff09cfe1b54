"""`python -m unclip_jax.embed`: runs a CLIP checkpoint over a prepared dataset, writing the `embedded` dataset.

    python -m unclip_jax.embed --checkpoint CLIP_DIR --data_dir DIR --dataset shapes [--dataset_config 32] \\
        [--splits train,heldout] --name NAME [--batch_size 64] [--states_dtype float16|float32]

Every record of `DIR/embedded/NAME/1.0.0` holds the image, caption, spec, CLIP tokens and mask, text
embedding, per-token text states and image embedding (see `unclip_jax.data.embedded`), so the prior and
decoder trainers read them with `open_source(DIR, "embedded", split, config=NAME)`. An existing NAME is
refused rather than reused or overwritten: it may have been embedded with another checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from unclip_jax import xla_flags
from unclip_jax.errors import ArgumentParser, UserError, check_writable, run_cli


def _parse(argv: Sequence[str]) -> argparse.Namespace:
  p = ArgumentParser(prog="python -m unclip_jax.embed", description=__doc__.splitlines()[0])
  p.add_argument("--checkpoint", required=True, help="CLIP stage checkpoint folder")
  p.add_argument("--data_dir", required=True, help="root folder of prepared datasets (the output goes here too)")
  p.add_argument("--dataset", required=True, help="source dataset name under --data_dir, e.g. shapes")
  p.add_argument("--dataset_config", default=None,
                 help="source builder config, e.g. 32 (default: the only one prepared)")
  p.add_argument("--splits", default=None, help="comma-separated source splits (default: all)")
  p.add_argument("--name", required=True, help="name of the embedded dataset (its tfds config)")
  p.add_argument("--batch_size", type=int, default=64, help="examples per CLIP forward")
  p.add_argument("--states_dtype", default="float16", help="float16 (half the size) or float32")
  p.add_argument("--out_data_dir", default=None, help="write under this root instead of --data_dir")
  return p.parse_args(argv)


def main(argv: Sequence[str]) -> int:
  args = _parse(argv)
  splits = None
  if args.splits is not None:
    splits = [s.strip() for s in args.splits.split(",")]
    if not all(splits):
      raise UserError(f"--splits {args.splits!r} has an empty split name; pass e.g. --splits train,heldout")
  if args.out_data_dir:
    check_writable(args.out_data_dir, "--out_data_dir")
  elif Path(args.data_dir).is_dir():  # a missing one gets make_builder's "prepare it first" message
    check_writable(args.data_dir, "--data_dir")
  xla_flags.apply_defaults()  # XLA CPU defaults unless XLA_FLAGS is set; before JAX starts (README "Benchmarks")
  xla_flags.enable_compile_cache()  # compiled programs kept between runs (README "Benchmarks")
  from unclip_jax.data import embedded  # slow imports (tfds, jax) after the flags are known to be sane

  builder = embedded.make_builder(
      checkpoint=args.checkpoint, data_dir=args.data_dir, dataset=args.dataset, name=args.name,
      dataset_config=args.dataset_config, splits=splits, batch_size=args.batch_size,
      states_dtype=args.states_dtype, out_data_dir=args.out_data_dir)
  builder.download_and_prepare()
  counts = ", ".join(f"{k}: {v.num_examples} ({v.num_bytes / max(v.num_examples, 1) / 1024:.1f} KiB/record)"
                     for k, v in builder.info.splits.items())
  print(f"wrote {builder.data_dir} ({counts})")
  return 0


if __name__ == "__main__":
  run_cli(main, sys.argv[1:])
