"""`python -m unclip_jax.data.prepare NAME --data_dir DIR`: writes a dataset as tfds array_record files.

TFDS builds into an `incomplete.*` folder and renames it when every split is written, so an interrupted
run leaves nothing a reader would pick up; it shows a progress bar per split. Preparing the same
dataset again reuses what is there. Datasets: `shapes` (procedural), `emoji` (npm icon sets, `--source`
= npm prefix), `fashion_mnist` (Debian dataset-fashion-mnist), `image_text` (your own images + captions).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from unclip_jax.errors import ArgumentParser, UserError, check_writable, run_cli

DATASETS = ("shapes", "emoji", "fashion_mnist", "image_text")
DEFAULT_SIZE = {"shapes": 64, "emoji": 64, "fashion_mnist": 28, "image_text": 64}


def _parse(argv):
  p = ArgumentParser(prog="python -m unclip_jax.data.prepare", description=__doc__.splitlines()[0])
  p.add_argument("name", help=f"dataset: {', '.join(DATASETS)}")
  p.add_argument("--data_dir", required=True, help="root folder for prepared datasets")
  p.add_argument("--source", default=None,
                 help="emoji: npm prefix with node_modules/@iconify-json/* (default $UNCLIP_JAX_EMOJI_SOURCE or "
                      "<repo>/.cache/npm); fashion_mnist: folder of the idx .gz files (default "
                      "/usr/share/datasets/fashion-mnist); image_text: folder of images + .txt, or .tar shard glob")
  p.add_argument("--image_size", type=int, default=None,
                 help="shapes: 32|64 (64); emoji: 8..512 (64); fashion_mnist: 28|32 (28); image_text: 8..1024 (64)")
  p.add_argument("--train_size", type=int, default=50_000, help="shapes: examples in the train split")
  p.add_argument("--heldout_size", type=int, default=2_000, help="shapes: examples in the heldout split")
  p.add_argument("--seed", type=int, default=0, help="shapes: base seed of the generated set")
  p.add_argument("--negation", action="store_true",
                 help="shapes: also draw negated captions (\"a red circle and no squares\"), config SIZE_negation")
  p.add_argument("--unnamed", type=float, default=0.0,
                 help="shapes: share of train scenes in random colours with colour-free captions (0 to 0.99)")
  p.add_argument("--unnamed_kinds", default=None,
                 help="shapes: comma-separated caption kinds the --unnamed share applies to (default: every kind), "
                      "e.g. single,count to keep every colour named in two-object scenes")
  p.add_argument("--max_concepts", type=int, default=None, help="emoji: use only the first N common concepts")
  p.add_argument("--heldout_fraction", type=float, default=0.05, help="emoji: share of (style, concept) pairs held out")
  p.add_argument("--max_examples", type=int, default=None, help="fashion_mnist: only the first N of each split")
  p.add_argument("--name", dest="collection", default="default",
                 help="image_text: name of this collection (its config folder)")
  p.add_argument("--validation_fraction", type=float, default=0.05, help="image_text: share of keys in validation")
  return p.parse_args(argv)


def prepare_shapes(data_dir: str, image_size: int, train_size: int, heldout_size: int, seed: int = 0,
                   negation: bool = False, unnamed: float = 0.0, unnamed_kinds: str | None = None):
  """Builds `shapes/<image_size>[_negation]` (or a custom-sized config) under `data_dir`; returns the builder."""
  from unclip_jax.data import builders

  if image_size not in (32, 64):
    raise UserError(f"--image_size must be 32 or 64 for shapes, got {image_size}")
  if train_size < 1 or heldout_size < 1:
    raise UserError("--train_size and --heldout_size must be positive")
  if not 0.0 <= unnamed < 1.0:
    raise UserError(f"--unnamed must be a share in [0, 1), got {unnamed}")
  config = shapes_config(image_size, train_size, heldout_size, seed, negation, unnamed, unnamed_kinds)
  builder = builders.Shapes(config=config, data_dir=data_dir, file_format=builders.FILE_FORMAT)
  builder.download_and_prepare()
  return builder


def shapes_config(image_size: int, train_size: int, heldout_size: int, seed: int = 0, negation: bool = False,
                  unnamed: float = 0.0, unnamed_kinds: str | None = None):
  """The registered config's name ("32", "64", "32_negation", "64_negation") for the default sizes, else a
  sized variant config with its own name, so two sizes never share a folder (tfds refuses a custom config
  named like a registered one); unnamed colours add "_u<percent>" ("32_n100000_h500_s0_u50"), and limiting
  them to some kinds adds those ("32_n100000_h500_s0_u50_single-count")."""
  from unclip_jax.data import builders

  suffix = "_negation" if negation else ""
  registered = {c.name: c for c in builders.Shapes.BUILDER_CONFIGS}[f"{image_size}{suffix}"]
  kinds = _unnamed_kinds(unnamed_kinds, registered.kinds, unnamed)
  if (train_size, heldout_size, seed, unnamed) == (registered.train_size, registered.heldout_size, registered.seed,
                                                   0.0):
    return registered.name
  suffix += "_u" + f"{unnamed * 100:g}".replace(".", "p") if unnamed else ""  # 0.5 → _u50, 0.125 → _u12p5
  suffix += "_" + "-".join(kinds) if kinds else ""
  return builders.ShapesConfig(name=f"{image_size}_n{train_size}_h{heldout_size}_s{seed}{suffix}",
                               image_size=image_size, train_size=train_size, heldout_size=heldout_size, seed=seed,
                               kinds=registered.kinds, unnamed=float(unnamed), unnamed_kinds=kinds)


def _unnamed_kinds(spelled: str | None, drawn: tuple[str, ...], unnamed: float) -> tuple[str, ...] | None:
  """`--unnamed_kinds` as a tuple in the drawn kinds' order; None when absent or naming every kind (the same set)."""
  if spelled is None:
    return None
  kinds = [k.strip() for k in spelled.split(",") if k.strip()]
  unknown = sorted(set(kinds) - set(drawn))
  if not kinds or unknown:
    raise UserError(f"--unnamed_kinds must name some of {', '.join(drawn)} (comma-separated), got {spelled!r}")
  if not unnamed:
    raise UserError("--unnamed_kinds needs --unnamed (the share of those kinds' scenes to draw unnamed)")
  kinds = tuple(k for k in drawn if k in kinds)
  return None if kinds == drawn else kinds


def default_emoji_source() -> str:
  from unclip_jax.data import emoji

  return os.environ.get(emoji.SOURCE_ENV) or str(emoji.DEFAULT_SOURCE)


def prepare_emoji(data_dir: str, source: str | None = None, image_size: int = 64, max_concepts: int | None = None,
                  heldout_fraction: float = 0.05):
  """Builds `emoji/<image_size>` (a variant name when subset or re-split) from the npm packages at `source`."""
  from unclip_jax.data import builders, emoji

  source = source or default_emoji_source()
  if not 8 <= image_size <= 512:
    raise UserError(f"--image_size must be between 8 and 512 for emoji, got {image_size}")
  if max_concepts is not None and max_concepts < 1:
    raise UserError(f"--max_concepts must be positive, got {max_concepts}")
  if not 0.0 <= heldout_fraction < 1.0:
    raise UserError(f"--heldout_fraction must be in [0, 1), got {heldout_fraction}")
  emoji.load_styles(source)  # a clear error (with the npm command) before tfds creates any folder
  config = builders.EmojiConfig(name=str(image_size), image_size=image_size, max_concepts=max_concepts,
                                heldout_fraction=heldout_fraction)
  if max_concepts is not None or heldout_fraction != 0.05 or image_size not in (32, 64):
    config.name += f"_c{max_concepts or 'all'}_h{round(heldout_fraction * 1000)}"
    config.description = "emoji subset or re-split"
  else:
    config = config.name  # the builder's own config
  builder = builders.Emoji(config=config, source=str(source), data_dir=data_dir, file_format=builders.FILE_FORMAT)
  builder.download_and_prepare()
  return builder


def prepare_fashion_mnist(data_dir: str, source: str | None = None, image_size: int = 28,
                          max_examples: int | None = None):
  """Builds `fashion_mnist/<image_size>` (or `<size>_n<N>` for a first-N subset) from the Debian files."""
  from unclip_jax.data import builders

  source = source or builders.FASHION_MNIST_SOURCE
  if image_size not in (28, 32):
    raise UserError(f"--image_size must be 28 or 32 for fashion_mnist, got {image_size}")
  if max_examples is not None and max_examples < 1:
    raise UserError(f"--max_examples must be positive, got {max_examples}")
  builders.fashion_mnist_arrays(source, "test")  # a clear error (naming the apt package) before writing
  config = str(image_size)  # the builder's own config, or a first-N subset of it:
  if max_examples is not None:
    config = builders.FashionMnistConfig(name=f"{image_size}_n{max_examples}", image_size=image_size,
                                         max_examples=max_examples, description="first-N subset")
  builder = builders.FashionMnist(config=config, source=str(source), data_dir=data_dir,
                                  file_format=builders.FILE_FORMAT)
  builder.download_and_prepare()
  return builder


def prepare_image_text(data_dir: str, source: str | None, name: str = "default", image_size: int = 64,
                       validation_fraction: float = 0.05):
  """Builds `image_text/<name>` from a folder or tar shards; skip counts land in `info.metadata`."""
  from unclip_jax.data import builders, image_files

  if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", name or ""):
    raise UserError(f"--name must be letters, digits, '_' or '-' (at most 64), got {name!r}")
  if not 8 <= image_size <= 1024:
    raise UserError(f"--image_size must be between 8 and 1024 for image_text, got {image_size}")
  if not 0.0 <= validation_fraction < 1.0:
    raise UserError(f"--validation_fraction must be in [0, 1), got {validation_fraction}")
  kind, paths = image_files.resolve_source(source or "")
  source = os.path.abspath(os.path.expanduser(source))  # the metadata names it the same from any cwd
  if kind == "folder" and not any(p.suffix.lower() in image_files.IMAGE_SUFFIXES
                                  for p in paths[0].rglob("*") if p.is_file()):
    raise UserError(f"no images ({', '.join(image_files.IMAGE_SUFFIXES)}) found under {source}")
  config = builders.ImageTextConfig(name=name, image_size=image_size, validation_fraction=validation_fraction)
  builder = builders.ImageText(config=config, source=str(source), data_dir=data_dir,
                               file_format=builders.FILE_FORMAT)
  if (Path(builder.data_dir) / "dataset_info.json").is_file():  # already prepared: only if it matches
    meta = builder.info.metadata or {}
    want = {"source": str(source), "image_size": image_size, "validation_fraction": validation_fraction}
    have = {k: meta.get(k) for k in want}
    if have != want:
      raise UserError(f"image_text/{name} under {data_dir} was prepared with {have}, not {want}; pick another "
                      f"--name or delete {builder.data_dir}")
  builder.download_and_prepare()
  return builder


def main(argv) -> int:
  args = _parse(argv)
  if args.name not in DATASETS:
    raise UserError(f"unknown dataset {args.name!r}; choose one of: {', '.join(DATASETS)}")
  size = args.image_size or DEFAULT_SIZE[args.name]
  check_writable(args.data_dir, "--data_dir")
  if args.name == "shapes":
    builder = prepare_shapes(args.data_dir, size, args.train_size, args.heldout_size, args.seed, args.negation,
                             args.unnamed, args.unnamed_kinds)
  elif args.name == "emoji":
    builder = prepare_emoji(args.data_dir, args.source, size, args.max_concepts, args.heldout_fraction)
  elif args.name == "fashion_mnist":
    builder = prepare_fashion_mnist(args.data_dir, args.source, size, args.max_examples)
  else:
    builder = prepare_image_text(args.data_dir, args.source, args.collection, size, args.validation_fraction)
  splits = ", ".join(f"{k}: {v.num_examples}" for k, v in builder.info.splits.items())
  print(f"prepared {builder.data_dir} ({splits})")
  meta = builder.info.metadata or {}
  if "licenses" in meta:
    print("licences: " + "; ".join(f"{style}: {lic['spdx']} ({lic['package']}@{lic['version']}, {lic['author']})"
                                   for style, lic in meta["licenses"].items()))
  if "skipped" in meta:
    reasons = ", ".join(f"{k}: {v}" for k, v in meta["skipped"].items()) or "none"
    print(f"skipped {meta['num_skipped']} ({reasons})")
  return 0


if __name__ == "__main__":
  run_cli(main, sys.argv[1:])
