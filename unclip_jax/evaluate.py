"""Evaluates an unCLIP pipeline on the `shapes` world: compositional accuracy, which stage loses it,
FD/KID/precision/recall, CLIP score and R-precision, zero-shot probes, the prior, and the guidance trade-off.

    python -m unclip_jax.evaluate [--checkpoint PIPELINE] --suite NAME [--num N] [--seed S] [--out DIR]

Without --checkpoint the demo pipeline shipped in the package is evaluated.

Suites: compositional, stages, fd, clip_score, zeroshot, prior, guidance, all (those seven), and candidates
(every decoder candidate graded: how well the pipeline's rater, and any --rerank-clip, picks among them;
its drawings kept in DIR/candidates.npz for a later run to rate again). Writes DIR/results.json,
DIR/results.md (one markdown table), sample grids per compositional task and stages row (DIR/grids/) and, for guidance,
DIR/guidance.png; the results files are rewritten after each suite (`meta.pending` lists those still to run), and
--resume keeps the suites a stopped run of the same command already wrote there.
The evaluator network (FD features) and evaluator CLIP are trained on first use and cached in --cache
(default ~/.cache/unclip_jax/eval); see unclip_jax/eval/.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Sequence

from unclip_jax import xla_flags
from unclip_jax.errors import ArgumentParser, UserError, check_writable, run_cli

SUITE_CHOICES = ("compositional", "stages", "fd", "clip_score", "zeroshot", "prior", "guidance", "all", "candidates")


def _floats(text: str, what: str) -> tuple[float, ...]:
  try:
    values = tuple(float(v) for v in text.split(",") if v.strip())
  except ValueError:
    raise UserError(f"{what} must be comma-separated numbers, got {text!r}") from None
  if not values or not all(math.isfinite(v) for v in values):
    raise UserError(f"{what} must be finite numbers, got {text!r}")
  return values


def _positive(value: int, what: str) -> int:
  if value < 1:
    raise UserError(f"{what} must be at least 1, got {value}")
  return value


def _tasks(text: str | None, suite: str) -> tuple[str, ...]:
  """--tasks as the suites' own task order, checked; () when not given (every task)."""
  from unclip_jax.eval import prompts

  if text is None:
    return ()
  if suite not in ("compositional", "candidates", "all"):
    raise UserError(f"--tasks chooses what the compositional and candidates suites draw; --suite {suite} draws none")
  asked = {t.strip() for t in text.split(",") if t.strip()}
  unknown = sorted(asked - set(prompts.TASKS))
  if unknown or not asked:
    raise UserError(f"--tasks takes some of {', '.join(prompts.TASKS)}, got {text!r}")
  if suite == "candidates" and "negation" in asked:
    raise UserError("--tasks: the candidates suite grades no negation (it fails by design); leave it out")
  return tuple(t for t in prompts.TASKS if t in asked)


def parse(argv: Sequence[str]):
  from unclip_jax.eval import prompts, report

  p = ArgumentParser(prog="python -m unclip_jax.evaluate", description=__doc__.split("\n\n")[0])
  p.add_argument("--checkpoint", default=None,
                 help="pipeline folder (pipeline.json + stage folders); default: the packaged demo pipeline")
  p.add_argument("--suite", required=True, help=f"one of {', '.join(SUITE_CHOICES)}")
  p.add_argument("--num", type=int, default=100,
                 help="prompts per cell: per task and split (compositional), per split (others) (default 100)")
  p.add_argument("--seed", type=int, default=0, help="base seed of prompts and sampling noise")
  p.add_argument("--out", default=None, help="output folder (default: eval-SUITE)")
  p.add_argument("--batch", type=int, default=32, help="images per sampling call (default 32)")
  p.add_argument("--cache", default=None,
                 help="where the evaluator networks are cached (default ~/.cache/unclip_jax/eval)")
  p.add_argument("--eval-clip", default=None,
                 help="CLIP stage folder to grade clip_score/guidance with "
                      "(default: train or reuse our evaluator CLIP)")
  p.add_argument("--decoder-guidance", default="1,2,3,4,6,8", help="guidance suite: decoder scales")
  p.add_argument("--prior-guidance", default="1,4", help="guidance suite: prior scales")
  p.add_argument("--guidance-num", type=int, default=None, help="guidance suite: prompts per setting (default --num)")
  p.add_argument("--train-ref", type=int, default=1000, help="fd suite: training images for the memorisation check")
  p.add_argument("--dataset-seed", type=int, default=0, help="the seed the generator's shapes data was built with")
  p.add_argument("--feature-steps", type=int, default=None, help="training steps of the evaluator CNN (default 1500)")
  p.add_argument("--eval-clip-steps", type=int, default=None,
                 help="training steps of the evaluator CLIP (default 2000)")
  p.add_argument("--decoder-steps", default=None, help="decoder sampling steps (default: the pipeline's)")
  p.add_argument("--prior-steps", default=None, help="prior sampling steps (default: the pipeline's)")
  p.add_argument("--sr-steps", default=None, help="upsampler sampling steps (default: the pipeline's)")
  p.add_argument("--prior-candidates", type=int, default=None,
                 help="prior samples per caption, the largest z_i·z_t kept (default: the pipeline's)")
  p.add_argument("--decoder-candidates", type=int, default=None,
                 help="decoder images per output, the one the pipeline's CLIP rates nearest the caption kept "
                      "(default: the pipeline's; 1 grades without CLIP reranking)")
  p.add_argument("--rate-upsampled", default=None, action=argparse.BooleanOptionalAction,
                 help="rate the decoder's candidates after the upsamplers or before them (default: the pipeline's)")
  p.add_argument("--rerank-clip", action="append", default=[], metavar="DIR",
                 help="candidates suite: a CLIP stage folder that rates the candidates beside the pipeline's rater "
                      "(repeatable)")
  p.add_argument("--tasks", default=None,
                 help="compositional and candidates suites: comma-separated tasks to draw, of "
                      f"{', '.join(prompts.TASKS)} (default: all; candidates: all but negation)")
  p.add_argument("--no-extra-zeroshot", action="store_true", help="zeroshot suite: skip fashion_mnist and emoji")
  p.add_argument("--no-progress", action="store_true", help="no progress bars")
  p.add_argument("--resume", action="store_true",
                 help="keep the suites already in --out's results.json (same pipeline and options) and run the rest")
  p.add_argument("--verbose", action="store_true", help="print the pipeline's per-call log")
  p.add_argument("--update-readme", default=None, metavar="FILE",
                 help=f"also put the results table into FILE between the lines {report.BEGIN!r} and {report.END!r}")
  args = p.parse_args(list(argv))
  if args.suite not in SUITE_CHOICES:
    raise UserError(f"unknown suite {args.suite!r}; choose one of {', '.join(SUITE_CHOICES)}")
  for what in ("num", "batch", "train_ref"):
    _positive(getattr(args, what), f"--{what.replace('_', '-')}")
  for what in ("guidance_num", "feature_steps", "eval_clip_steps", "prior_candidates", "decoder_candidates"):
    if getattr(args, what) is not None:
      _positive(getattr(args, what), f"--{what.replace('_', '-')}")
  if args.rerank_clip and args.suite != "candidates":
    raise UserError("--rerank-clip rates decoder candidates: it applies to --suite candidates only")
  args.tasks = _tasks(args.tasks, args.suite)
  if not 0 <= args.seed < 2 ** 31:
    raise UserError(f"--seed must lie in [0, 2**31), got {args.seed}")
  return args


def options(args):
  from unclip_jax.eval.context import Options

  o = Options(num=args.num, seed=args.seed, batch=args.batch, eval_clip=args.eval_clip,
              decoder_guidance=_floats(args.decoder_guidance, "--decoder-guidance"),
              prior_guidance=_floats(args.prior_guidance, "--prior-guidance"), guidance_num=args.guidance_num,
              train_ref=args.train_ref, dataset_seed=args.dataset_seed, zeroshot_extra=not args.no_extra_zeroshot,
              progress=not args.no_progress, raters=tuple(args.rerank_clip), tasks=args.tasks)
  if args.cache:
    o.cache_dir = Path(args.cache)
  if args.feature_steps:
    small = args.feature_steps < 200  # a quick smoke run: fewer scenes to draw as well
    o.feature_net = dataclasses.replace(o.feature_net, steps=args.feature_steps,
                                        pool=128 if small else o.feature_net.pool,
                                        test_size=32 if small else o.feature_net.test_size)
  if args.eval_clip_steps:
    small = args.eval_clip_steps < 200
    o.eval_clip_config = dataclasses.replace(o.eval_clip_config, steps=args.eval_clip_steps,
                                             pool=128 if small else o.eval_clip_config.pool,
                                             check_size=50 if small else o.eval_clip_config.check_size)
  for stages, value in ((("decoder",), args.decoder_steps), (("prior",), args.prior_steps),
                        (("sr_64_256", "sr_256_1024"), args.sr_steps)):
    for stage in stages if value is not None else ():
      o.overrides.setdefault(stage, {})["steps"] = value
  for stage in ("prior", "decoder"):
    if getattr(args, f"{stage}_candidates") is not None:
      o.overrides.setdefault(stage, {})["candidates"] = getattr(args, f"{stage}_candidates")
  if args.rate_upsampled is not None:
    o.overrides.setdefault("decoder", {})["rate_upsampled"] = args.rate_upsampled
  return o


# Arguments that change how a run looks or where it writes, not its numbers: a resumed run may differ in them.
_PRESENTATION = ("checkpoint", "out", "no_progress", "verbose", "update_readme", "resume")
# Options added after results were written, at the value those runs had: left out of the fingerprint at that
# value, so an earlier run still resumes.
_ADDED = {"tasks": ()}


def fingerprint(args, pipeline: dict) -> dict:
  """What a suite's numbers depend on: the options and the pipeline's weights (checksums) and sampling settings."""
  import hashlib
  import json

  from unclip_jax.checkpoint import CHECKSUMS

  content = {"sampling": pipeline["meta"].get("sampling"),
             "stages": {name: meta.get(CHECKSUMS) for name, meta in sorted(pipeline["stages"].items())}}
  digest = hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()
  options = {k: v for k, v in sorted(vars(args).items())
             if k not in _PRESENTATION and not (k in _ADDED and v == _ADDED[k])}
  return {"options": json.loads(json.dumps(options, default=str)), "pipeline": digest}  # as results.json holds it


def finished_suites(out: Path, expected: dict) -> tuple[dict, dict]:
  """(results, seconds) of the suites a stopped run with the same fingerprint wrote to out/results.json."""
  import json

  path = out / "results.json"
  if not path.is_file():
    return {}, {}
  try:
    saved = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise UserError(f"--resume: cannot read {path} ({e}); use another --out or delete it") from None
  if saved.get("meta", {}).get("fingerprint") != expected:
    raise UserError(f"--resume: {path} was not written by this command on this pipeline (other options, weights or "
                    "sampling settings); rerun with the same ones, or use another --out")
  return {k: v for k, v in saved.items() if k != "meta"}, saved["meta"].get("seconds", {})


def main(argv: Sequence[str]) -> int:
  from unclip_jax.eval import SUITES, report, suite_runner

  args = parse(argv)
  opts = options(args)
  xla_flags.apply_defaults()  # XLA CPU defaults unless XLA_FLAGS is set; before JAX starts (README "Benchmarks")
  xla_flags.enable_compile_cache()  # compiled programs kept between runs (README "Benchmarks")
  from unclip_jax.checkpoint import read_stage
  from unclip_jax.pipeline import Pipeline, default_pipeline, read_pipeline

  if args.checkpoint is None:
    args.checkpoint = str(default_pipeline())
  pipeline = read_pipeline(args.checkpoint)  # a clear error before anything slow
  if args.eval_clip:
    read_stage(args.eval_clip, kind="clip")
  for folder in args.rerank_clip:
    read_stage(folder, kind="clip")
  out = Path(args.out or f"eval-{args.suite}")
  check_writable(out, "--out", folder=True)
  key = fingerprint(args, pipeline)
  opts.draws_dir, opts.pipeline_digest = out, key["pipeline"]
  done, done_seconds = finished_suites(out, key) if args.resume else ({}, {})

  from unclip_jax.eval.context import Context

  def log(message: str) -> None:
    print(message, file=sys.stderr)

  pipe = Pipeline.load(args.checkpoint, log=log if args.verbose else (lambda m: None))
  if args.sr_steps is not None:
    opts.overrides.update({stage: {"steps": args.sr_steps} for stage in pipe.sampling if stage.startswith("sr_")})
  ctx = Context(pipe, opts, log)
  settings = ctx.settings()  # bad --decoder-steps / --prior-steps / --sr-steps fail here, before any work
  if args.suite == "candidates":
    from unclip_jax.eval import candidates

    candidates.check(settings)
  suites = SUITES if args.suite == "all" else (args.suite,)
  results = {name: done[name] for name in suites if name in done}
  timings = {name: done_seconds[name] for name in results if name in done_seconds}
  paths = {}
  meta = {"checkpoint": str(args.checkpoint), "suite": args.suite, "num": args.num, "seed": args.seed,
          "output_size": pipe.output_size, "settings": {k: v.to_dict() for k, v in settings.items()},
          "seconds": timings, "argv": list(argv), "fingerprint": key}
  if results:
    log(f"resumed: {', '.join(results)} kept from {out / 'results.json'}")
  for i, name in enumerate(suites):
    if name in results:
      continue
    start = time.perf_counter()
    log(f"suite {name} ...")
    results[name] = suite_runner(name)(ctx)
    timings[name] = round(time.perf_counter() - start, 1)
    log(f"suite {name}: {timings[name]}s")
    # Written after every suite (an `all` run takes up to 80 min on a CPU): its finished suites can be read
    # while it runs and survive a stop; `meta.pending` names the suites not yet in the files.
    pending = [later for later in suites[i + 1:] if later not in results]
    paths.update(report.write(results, out, {**meta, "pending": pending} if pending else meta))
  if not paths:  # every suite was already there: the files again, so the table and plot match this code
    paths.update(report.write(results, out, meta))
  if args.update_readme:
    report.replace_block(args.update_readme, report.markdown(results))
    paths["readme"] = Path(args.update_readme)
  print(report.markdown(results), end="")
  for name, path in paths.items():
    print(f"{name}: {path}")
  return 0


if __name__ == "__main__":
  run_cli(main, sys.argv[1:])
