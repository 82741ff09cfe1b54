"""Build unCLIP pipeline folders.

    python -m unclip_jax.pipeline init-random --preset tiny --out DIR
    python -m unclip_jax.pipeline assemble --clip C --prior P --decoder D --sr-64-256 S [--sr-64-256-last L] \
        [--rerank-clip R] --out DIR
    python -m unclip_jax.pipeline pack SRC --out DIR [--dtype float16] [--meta results.json] [--reuse-unchanged OLD]
    python -m unclip_jax.pipeline remap --decoder D --old-clip C --new-clip C2 --data_dir DIR --dataset shapes \
        [--dataset_config 32] [--num 4096] --out DIR
"""

from __future__ import annotations

import sys
from typing import Sequence

import json
from pathlib import Path

from unclip_jax.errors import ArgumentParser, UserError, check_writable, run_cli
from unclip_jax.pipeline.folder import REQUIRED, STAGE_KINDS, assemble, pack
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
    what = " that only rates the decoder's candidates against the caption" if name == "rerank_clip" else ""
    a.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None,
                   required=name in REQUIRED, help=f"{STAGE_KINDS[name]} stage folder{what}")
  a.add_argument("--preset", default="karlo", choices=("karlo", "paper"), help="sampling defaults")
  a.add_argument("--out", required=True)
  k = sub.add_parser("pack", help="a self-contained copy of a pipeline for shipping: sampling weights only, "
                                  "stored in a smaller dtype")
  k.add_argument("src", help="pipeline folder")
  k.add_argument("--out", required=True)
  k.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"), help="storage dtype")
  k.add_argument("--no-ema", dest="ema", action="store_false", help="ship the online weights, not the EMA")
  k.add_argument("--meta", default=None, help="JSON file whose fields are added to pipeline.json (recipe, results)")
  k.add_argument("--sampling", default=None,
                 help='JSON of sampling defaults to set, e.g. \'{"decoder": {"steps": "50", "guidance_scale": 3}}\'')
  k.add_argument("--reuse-unchanged", dest="reuse", default=None, metavar="OLD",
                 help="an earlier packed folder: stages whose weights are identical keep its files (a re-ship of "
                      "unchanged weights then changes no weight file in git)")
  r = sub.add_parser("remap", help="a decoder's CLIP input layers refit for a retrained CLIP (a warm start for "
                                   "train.init_from; unclip_jax.pipeline.remap)")
  r.add_argument("--decoder", required=True, help="decoder stage folder (export or packed)")
  r.add_argument("--old-clip", dest="old_clip", required=True, help="the CLIP stage the decoder was trained with")
  r.add_argument("--new-clip", dest="new_clip", required=True, help="the retrained CLIP stage")
  r.add_argument("--data_dir", required=True, help="root folder of prepared datasets")
  r.add_argument("--dataset", required=True, help="prepared dataset whose scenes the maps are fit on, e.g. shapes")
  r.add_argument("--dataset_config", default=None, help="its builder config, e.g. 32")
  r.add_argument("--split", default="train")
  r.add_argument("--num", type=int, default=4096, help="scenes to fit on")
  r.add_argument("--ridge", type=float, default=None,
                 help="ridge strength, relative to the inputs' mean variance (default: remap.RIDGE, 1e-3)")
  r.add_argument("--out", required=True)
  args = parser.parse_args(list(argv))
  check_writable(args.out, "--out")
  if args.command == "init-random":
    out = make_random_pipeline(args.out, args.preset, args.seed)
  elif args.command == "remap":
    from unclip_jax.pipeline.remap import remap_decoder

    remap_decoder(args.decoder, args.old_clip, args.new_clip, args.out, data_dir=args.data_dir,
                  dataset=args.dataset, dataset_config=args.dataset_config, split=args.split, num=args.num,
                  **({} if args.ridge is None else {"ridge": args.ridge}))
    out = args.out
  elif args.command == "assemble":
    out = assemble(args.out, {n: getattr(args, n) for n in STAGE_KINDS}, preset=args.preset)
  else:
    meta = None
    if args.meta:
      try:
        meta = json.loads(Path(args.meta).read_text())
      except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"--meta {args.meta} is not a readable JSON file ({e})") from None
      if not isinstance(meta, dict):
        raise UserError(f"--meta {args.meta} must hold a JSON object")
    try:
      sampling = json.loads(args.sampling) if args.sampling else None
    except json.JSONDecodeError as e:
      raise UserError(f"--sampling is not valid JSON ({e.msg})") from None
    nested = isinstance(sampling, dict) and all(isinstance(v, dict) for v in sampling.values())
    if sampling is not None and not nested:
      raise UserError("--sampling must be a JSON object {stage: {field: value}}")
    out = pack(args.src, args.out, storage_dtype=None if args.dtype == "float32" else args.dtype, ema=args.ema,
               meta=meta, sampling=sampling, reuse=args.reuse)
  print(f"pipeline: {out}")
  return 0


if __name__ == "__main__":
  run_cli(main, sys.argv[1:])
