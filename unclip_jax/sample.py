"""Sample images from an unCLIP pipeline folder (text → image, and the paper's applications).

    python -m unclip_jax.sample --prompt "a red circle above a blue square"      (the packaged demo pipeline)
    python -m unclip_jax.sample --checkpoint DIR --prompt "a corgi" [--prompt ...] [--prompts-file F] --out OUT
    python -m unclip_jax.sample --from-sidecar OUT/0000.json --out OUT2          (reproduces that image exactly)
    python -m unclip_jax.sample variations IMAGE --checkpoint DIR --out OUT [--num 4]
    python -m unclip_jax.sample interpolate IMAGE_A IMAGE_B --frames 5 [--invert] --checkpoint DIR --out OUT
    python -m unclip_jax.sample textdiff IMAGE --from "a photo of a cat" --to "an anime drawing of a cat" [--invert] ...

`--invert` decodes from the images' DDIM latents (the paper's inversion) rather than from seed noise.
Without --checkpoint the demo pipeline shipped in the package is used; without --out the images go to
the next free samples/NNN folder.

Writes one PNG per image (NNNN.png), a JSON sidecar beside each (prompt, seed, per-stage settings,
checkpoint, dtype, weights, compiled batch) and grid.png (one row per prompt / application row);
`--trajectory` adds NNNN_trajectory.png (the decoder's predicted x0 every few steps) and .gif.
Files appear whole or not at all; on an error the files of this run are removed.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from unclip_jax import applications, xla_flags
from unclip_jax.data import shapes
from unclip_jax.errors import ArgumentParser, UserError, run_cli
from unclip_jax.images import load_image, make_grid
from unclip_jax.models.tokenizer import clean_text
from unclip_jax.outputs import OutputSet
from unclip_jax.pipeline import (MAX_CANDIDATES, PIPELINE_FILE, Pipeline, StageSampling, check_sampling, check_scale,
                                 check_steps, default_pipeline, image_keys, read_pipeline)

MODES = ("variations", "interpolate", "textdiff")
SIDECAR_VERSION = 1
MAX_IMAGES = 10_000


def _common(p: argparse.ArgumentParser) -> None:
  p.add_argument("--checkpoint", default=None,
                 help="pipeline folder (pipeline.json + stages); default: the demo pipeline shipped in the package")
  p.add_argument("--out", default=None, help="output folder for PNGs, sidecars and the grid (default: the next "
                 "free samples/NNN; a folder holding earlier results is refused unless --overwrite)")
  p.add_argument("--overwrite", action="store_true", help="replace earlier results in --out")
  p.add_argument("--seed", type=int, default=0, help="seed of the first image; image i uses seed + i")
  p.add_argument("--batch-size", type=int, default=None, help="images per compiled batch (default: all)")
  p.add_argument("--prior-steps", default=None, help="prior sampling steps (default: pipeline.json)")
  p.add_argument("--decoder-steps", default=None, help="decoder sampling steps")
  p.add_argument("--sr-steps", default=None, help="steps of every upsampler")
  p.add_argument("--prior-guidance", default=None, help="prior classifier-free guidance scale")
  p.add_argument("--decoder-guidance", default=None, help="decoder classifier-free guidance scale")
  p.add_argument("--sampler", default=None, choices=("ddpm", "ddim"), help="prior and decoder sampler")
  p.add_argument("--prior-candidates", type=int, default=None,
                 help="prior samples per caption; the one with the largest z_i·z_t is kept (default: pipeline.json)")
  p.add_argument("--decoder-candidates", type=int, default=None,
                 help="decoder images per output; the one the pipeline's CLIP rates nearest the caption (the source "
                      "image for variations) is kept: CLIP reranking (default: pipeline.json; interpolate and "
                      "textdiff draw one)")
  p.add_argument("--rate-upsampled", default=None, action=argparse.BooleanOptionalAction,
                 help="rate the decoder's candidates after the upsamplers, at the output size (K times the "
                      "upsampling work), or before them (default: pipeline.json; the demo's rater is a 64 px CLIP)")
  p.add_argument("--dtype", default=None, choices=("float32", "bfloat16"),
                 help="compute dtype (default: each stage's config); parameters stay float32")
  p.add_argument("--ema", default=True, action=argparse.BooleanOptionalAction,
                 help="use EMA weights where a stage has them (default)")
  p.add_argument("--trajectory", action="store_true", help="also save the decoder's denoising progression")


def _parser(mode: str | None) -> argparse.ArgumentParser:
  prog = "python -m unclip_jax.sample" + (f" {mode}" if mode else "")
  p = ArgumentParser(prog=prog, description=__doc__ if mode is None else __doc__.split("\n\n")[0],
              formatter_class=argparse.RawDescriptionHelpFormatter)
  if mode is None:
    _common(p)
    p.add_argument("--prompt", action="append", default=[], help="caption (repeatable)")
    p.add_argument("--prompts-file", default=None, help="text file, one caption per non-empty line")
    p.add_argument("--num", type=int, default=1, help="images per prompt")
    p.add_argument("--from-sidecar", default=None, help="re-create the image a sidecar JSON describes")
  else:
    _common(p)
    if mode == "variations":
      p.add_argument("image")
      p.add_argument("--num", type=int, default=4, help="variations (one seed each)")
    elif mode == "interpolate":
      p.add_argument("image_a")
      p.add_argument("image_b")
      p.add_argument("--frames", type=int, default=5, help="images in the row, endpoints included")
      p.add_argument("--interp-noise", action="store_true",
                     help="also slerp the decoder's x_T between the endpoints' noise (seed, seed + 1)")
      p.add_argument("--invert", action="store_true",
                     help="slerp between the images' DDIM-inverted latents instead, so the row's ends redraw "
                          "the two images (decodes with DDIM, eta 0)")
    else:
      p.add_argument("image")
      p.add_argument("--from", dest="from_text", required=True, help="caption describing the image now")
      p.add_argument("--to", dest="to_text", required=True, help="caption describing the wanted image")
      p.add_argument("--strengths", default="0,0.25,0.5,0.75",
                     help="comma-separated slerp fractions toward the text difference (0 = the image)")
      p.add_argument("--invert", action="store_true",
                     help="decode every strength from the image's DDIM-inverted latent (the paper's way: "
                          "strength 0 redraws the image; decodes with DDIM, eta 0)")
  return p


# ------------------------------------------------------------------------------------------- checks


def _overrides(args) -> dict:
  o = {"prior": {}, "decoder": {}, "sr_64_256": {}, "sr_256_1024": {}}
  if args.prior_steps is not None:
    o["prior"]["steps"] = check_steps(args.prior_steps, "--prior-steps")
  if args.decoder_steps is not None:
    o["decoder"]["steps"] = check_steps(args.decoder_steps, "--decoder-steps")
  if args.sr_steps is not None:
    steps = check_steps(args.sr_steps, "--sr-steps")
    o["sr_64_256"]["steps"] = o["sr_256_1024"]["steps"] = steps
  if args.prior_guidance is not None:
    o["prior"]["guidance_scale"] = check_scale(args.prior_guidance, "--prior-guidance")
  if args.decoder_guidance is not None:
    o["decoder"]["guidance_scale"] = check_scale(args.decoder_guidance, "--decoder-guidance")
  if args.sampler is not None:
    o["prior"]["sampler"] = o["decoder"]["sampler"] = args.sampler
  if args.batch_size is not None and not 1 <= args.batch_size <= 4096:
    raise UserError(f"--batch-size must lie between 1 and 4096, got {args.batch_size}")
  for stage in ("prior", "decoder"):
    n = getattr(args, f"{stage}_candidates")
    if n is not None:
      if not 1 <= n <= MAX_CANDIDATES:
        raise UserError(f"--{stage}-candidates must lie between 1 and {MAX_CANDIDATES}, got {n}")
      o[stage]["candidates"] = n
  if args.rate_upsampled is not None:
    o["decoder"]["rate_upsampled"] = args.rate_upsampled
  if not 0 <= args.seed < 2 ** 32:
    raise UserError(f"--seed must lie in [0, 2**32), got {args.seed}")
  return o


def _check_num(num: int) -> None:
  if not 1 <= num <= MAX_IMAGES:
    raise UserError(f"--num must lie between 1 and {MAX_IMAGES}, got {num}")


def _check_image(path: str) -> None:
  """Fails early (before loading models) on a missing or unreadable image."""
  load_image(path, 8)


def _read_prompts(args) -> list[str]:
  prompts = list(args.prompt)
  if args.prompts_file:
    path = Path(args.prompts_file)
    if not path.is_file():
      raise UserError(f"prompts file {path} does not exist" if not path.exists() else f"{path} is not a file")
    try:
      lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
      raise UserError(f"prompts file {path} is not UTF-8 text") from None
    from_file = [l.strip() for l in lines if l.strip()]
    if not from_file:
      raise UserError(f"prompts file {path} has no captions (one per non-empty line)")
    prompts += from_file
  if not prompts:
    raise UserError("give at least one caption with --prompt or --prompts-file")
  for p in prompts:
    if not p.strip():
      raise UserError("a --prompt is empty; give some text to draw")
  return [p.strip() for p in prompts]


# ------------------------------------------------------------------------------------------- output


def _settings_record(settings) -> dict:
  return {stage: s.to_dict() for stage, s in settings.items()}


# --------------------------------------------------------------------------------------------- modes


# In-process reuse of a loaded pipeline and its compiled programs (tests, notebooks), with what loading it
# said (such as "no EMA weights"): a reused pipeline says it again, so a run's messages do not depend on
# what ran before it in the same process.
_CACHE: dict = {}


def _load(args, log):
  read_pipeline(args.checkpoint)  # a bad folder fails before anything slow
  folder = Path(args.checkpoint).absolute()
  key = (str(folder), (folder / PIPELINE_FILE).stat().st_mtime_ns, bool(args.ema), args.dtype)
  if key in _CACHE:
    pipe, said = _CACHE[key]
    pipe.log, pipe.timings = log, []
    for message in said:
      log(message)
    return pipe
  start, said = time.perf_counter(), []

  def log_and_keep(message: str) -> None:
    said.append(message)
    log(message)

  pipe = Pipeline.load(args.checkpoint, ema=args.ema, dtype=args.dtype, log=log_and_keep)
  pipe.log = log
  _CACHE.clear()
  _CACHE[key] = (pipe, said)
  log(f"loaded {args.checkpoint} in {time.perf_counter() - start:.1f}s "
      f"({pipe.n_devices} device(s), output {pipe.output_size}px)")
  return pipe


def _base_record(args, pipe, settings, mode: str) -> dict:
  return {"format": SIDECAR_VERSION, "mode": mode, "checkpoint": str(Path(args.checkpoint).absolute()),
          "settings": _settings_record(settings),
          "steps": {s: v.steps for s, v in settings.items()},
          "guidance": {s: v.guidance_scale for s, v in settings.items() if s in ("prior", "decoder")},
          "sampler": {s: v.sampler for s, v in settings.items()},
          "prior_candidates": settings["prior"].candidates if "prior" in settings else 1,
          "dtype": args.dtype or "config", "ema": bool(args.ema),
          "weights": pipe.weights, "size": pipe.output_size}


def _start(args, log, *, invert: bool = False):
  """What every mode does once its own arguments are checked: stage overrides from the flags, the output
  writer (refusing a bad --out before anything slow), the loaded pipeline and its per-stage settings."""
  overrides = _overrides(args)
  if invert and args.sampler == "ddpm":
    raise UserError("--invert decodes with DDIM (eta 0); drop --sampler ddpm")
  writer = OutputSet(args.out, overwrite=args.overwrite)
  pipe = _load(args, log)
  settings = pipe.settings(overrides)
  if invert:
    settings["decoder"] = applications.inversion_decoder_settings(settings["decoder"], _has_stride(pipe), log)
  return writer, pipe, settings


def _has_stride(pipe):
  """Whether the decoder's process can be respaced as `steps`."""
  def check(steps: str) -> bool:
    try:
      pipe.process("decoder", steps)
    except UserError:
      return False
    return True
  return check


def _write_images(writer: OutputSet, args, pipe, settings, mode: str, result: dict, records: list[dict],
                  cols: int) -> list[Path]:
  """NNNN.png + NNNN.json per image (the run's shared record, then the image's own fields), grid.png and,
  with --trajectory, the trajectories; then commits the files atomically."""
  base = _base_record(args, pipe, settings, mode)
  names = [f"{i:04d}" for i in range(len(records))]
  for i, (name, rec) in enumerate(zip(names, records)):
    writer.png(f"{name}.png", result["images"][i])
    writer.json(f"{name}.json", {**base, "prompt": "", **rec, "index": i, "image": f"{name}.png",
                                 "batch_size": int(result["rows"])})
  writer.png("grid.png", make_grid(result["images"], cols))
  if args.trajectory:
    writer.trajectories(names, result["trajectory"], pipe.output_size)
  return writer.commit()


def demo_prompt_warning(prompt: str) -> str | None:
  """Why `prompt` lies outside the captions the packaged demo pipeline learned (the `shapes` grammar), or
  None. The demo still draws such a prompt, but only ever as some scene of coloured shapes, so a user who
  typed "a corgi" or "an orange circle" should hear why the picture ignores part of it."""
  text = clean_text(prompt)  # what the CLIP tokenizer reads
  try:
    shapes.parse_caption(text)
    return None
  except ValueError:
    pass
  hint = " (its captions say \"a\" before every colour: \"a orange circle\")" if re.search(r"\ban\b", text) else ""
  return (f"warning: {prompt!r} is outside the captions the demo pipeline learned{hint}; it knows the shapes "
          f"world only: \"a red circle\", \"two blue squares\", \"a red circle and a blue square\", "
          f"\"a red circle above a blue square\", \"a red circle and no squares\" "
          f"(colours: {', '.join(shapes.COLORS)}; shapes: {', '.join(shapes.SHAPES)}; "
          f"relations: {', '.join(shapes.RELATIONS)}; counts: "
          f"{', '.join(shapes.NUMBERS.values())}). Pass --checkpoint DIR for a pipeline trained on other captions.")


def run_text(args, log) -> list[Path]:
  if args.from_sidecar:
    return run_sidecar(args, log)
  prompts = _read_prompts(args)
  if args.demo_default:
    for prompt in dict.fromkeys(prompts):
      warning = demo_prompt_warning(prompt)
      if warning:
        log(warning)
  _check_num(args.num)
  writer, pipe, settings = _start(args, log)
  all_prompts = [p for p in prompts for _ in range(args.num)]
  seeds = [args.seed + i for i in range(len(all_prompts))]
  if seeds[-1] >= 2 ** 32:
    raise UserError("--seed plus the number of images must stay below 2**32")
  result = pipe.generate(all_prompts, seeds, settings, batch=args.batch_size, trajectory=args.trajectory)
  _report_timings(pipe, len(all_prompts), log)
  records = [{"prompt": p, "seed": seed} for p, seed in zip(all_prompts, seeds)]
  cols = args.num if len(prompts) > 1 else min(len(all_prompts), 8)
  return _write_images(writer, args, pipe, settings, "text", result, records, cols)


def run_sidecar(args, log) -> list[Path]:
  path = Path(args.from_sidecar)
  if not path.is_file():
    raise UserError(f"sidecar {path} does not exist")
  try:
    rec = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError):
    raise UserError(f"sidecar {path} is not valid JSON") from None
  need = ("mode", "prompt", "seed", "settings", "checkpoint", "batch_size")
  if not isinstance(rec, dict) or any(k not in rec for k in need):
    raise UserError(f"{path} is not an unclip_jax sample sidecar (needs {', '.join(need)})")
  if rec["mode"] != "text":
    raise UserError(f"{path} describes a {rec['mode']!r} image; only text-to-image sidecars can be replayed")
  args.checkpoint = args.checkpoint or rec["checkpoint"]
  args.dtype = None if rec.get("dtype", "config") == "config" else rec["dtype"]
  args.ema = bool(rec.get("ema", True))
  writer = OutputSet(args.out, overwrite=args.overwrite)
  pipe = _load(args, log)
  # sidecars before the `candidates` setting kept the prior's count beside the settings
  older = {"prior": {"candidates": rec.get("prior_candidates", 1)}}
  settings = {s: check_sampling(StageSampling.from_dict({**older.get(s, {}), **d}), s)
              for s, d in rec["settings"].items()}
  if set(settings) != set(pipe.sampling):
    raise UserError(f"{path} names stages {sorted(settings)}, the pipeline has {sorted(pipe.sampling)}")
  rows = int(rec["batch_size"])  # the recorded batch shape, so that XLA compiles the same program
  if not pipe.runner.fits(rows):
    log(f"note: {path} was drawn in a batch of {rows} rows, which {pipe.n_devices} device(s) cannot split; "
        "replaying it alone (each image has its own noise, so only float rounding can differ)")
    rows = 1
  result = pipe.generate([rec["prompt"]], [int(rec["seed"])], settings, batch=rows, rows=rows)
  name = path.stem
  writer.png(f"{name}.png", result["images"][0])
  writer.json(f"{name}.json", {**rec, "reproduced_from": str(path.absolute())})
  return writer.commit()


def _inverted_latents(pipe, paths: Sequence[str], embeds: np.ndarray, settings, log) -> np.ndarray:
  """The decoder's DDIM latents of the images (read at the decoder's size) under their own embeddings."""
  images = np.stack([load_image(p, pipe.image_size) for p in paths]).astype(np.float32) / 127.5 - 1.0
  log(f"inverting {len(paths)} image(s), decoder steps {settings['decoder'].steps}")
  return pipe.invert(images, embeds, settings["decoder"])


def _image_embeds(pipe, paths: Sequence[str]) -> np.ndarray:
  images = np.stack([load_image(p, pipe.clip_config.image_size) for p in paths])
  return pipe.encode_images(images)


def run_variations(args, log) -> list[Path]:
  _check_image(args.image)
  _check_num(args.num)
  writer, pipe, settings = _start(args, log)
  emb = _image_embeds(pipe, [args.image])
  seeds = [args.seed + i for i in range(args.num)]
  result = pipe.decode_embeddings(np.repeat(emb, args.num, axis=0), seeds, settings, batch=args.batch_size,
                                  trajectory=args.trajectory)
  _report_timings(pipe, args.num, log)
  source = str(Path(args.image).absolute())
  records = [{"source_image": source, "seed": seed} for seed in seeds]
  return _write_images(writer, args, pipe, settings, "variations", result, records, min(args.num, 8))


def run_interpolate(args, log) -> tuple[list[Path], dict]:
  _check_image(args.image_a)
  _check_image(args.image_b)
  if not 2 <= args.frames <= 256:
    raise UserError(f"--frames must lie between 2 and 256, got {args.frames}")
  if args.invert and args.interp_noise:
    raise UserError("--invert and --interp-noise both choose the decoder noise; give one of them")
  writer, pipe, settings = _start(args, log, invert=args.invert)
  emb = _image_embeds(pipe, [args.image_a, args.image_b])
  ts, embeds = applications.interpolation_embeddings(emb[0], emb[1], args.frames)
  seeds = [args.seed] * args.frames  # same decoder noise along the row, unless --interp-noise
  x_T = None
  if args.interp_noise:
    if args.seed + 1 >= 2 ** 32:
      raise UserError("--seed + 1 must stay below 2**32 with --interp-noise")
    na, nb = pipe.decoder_noise(image_keys([args.seed, args.seed + 1]))
  elif args.invert:
    na, nb = _inverted_latents(pipe, [args.image_a, args.image_b], emb, settings, log)
  if args.interp_noise or args.invert:  # the two latents slerped along the row, like the embeddings
    x_T = applications.slerp_latents(na, nb, ts)
  result = pipe.decode_embeddings(embeds, seeds, settings, x_T=x_T, batch=args.batch_size,
                                  trajectory=args.trajectory)
  _report_timings(pipe, args.frames, log)
  sources = [str(Path(args.image_a).absolute()), str(Path(args.image_b).absolute())]
  records = [{"images": sources, "fraction": float(t), "interp_noise": bool(args.interp_noise),
              "inverted": bool(args.invert), "seed": seed} for t, seed in zip(ts, seeds)]
  written = _write_images(writer, args, pipe, settings, "interpolate", result, records, args.frames)
  return written, {"image_embeds": emb, "decoder_embeds": embeds}


def run_textdiff(args, log) -> list[Path]:
  _check_image(args.image)
  try:
    strengths = [float(s) for s in args.strengths.split(",") if s.strip()]
  except ValueError:
    raise UserError(f"--strengths must be comma-separated numbers, got {args.strengths!r}") from None
  if not strengths or any(not (math.isfinite(s) and 0 <= s <= 1) for s in strengths):
    raise UserError(f"--strengths must be numbers in [0, 1], got {args.strengths!r}")
  for name, text in (("--from", args.from_text), ("--to", args.to_text)):
    if not text.strip():
      raise UserError(f"{name} is empty; give a caption")
  writer, pipe, settings = _start(args, log, invert=args.invert)
  emb = _image_embeds(pipe, [args.image])[0]
  text = pipe.encode_text([args.from_text, args.to_text])
  embeds = applications.textdiff_embeddings(emb, text.embeds[0], text.embeds[1], strengths)
  seeds = [args.seed] * len(strengths)
  x_T = None
  if args.invert:
    x_T = np.repeat(_inverted_latents(pipe, [args.image], emb[None], settings, log), len(strengths), axis=0)
  result = pipe.decode_embeddings(embeds, seeds, settings, x_T=x_T, batch=args.batch_size,
                                  trajectory=args.trajectory)
  _report_timings(pipe, len(strengths), log)
  source = str(Path(args.image).absolute())
  records = [{"source_image": source, "from": args.from_text, "to": args.to_text, "strength": strength,
              "inverted": bool(args.invert), "seed": seed} for strength, seed in zip(strengths, seeds)]
  return _write_images(writer, args, pipe, settings, "textdiff", result, records, len(strengths))


def _report_timings(pipe, n_images: int, log) -> None:
  compile_s = sum(t["compile_s"] for t in pipe.timings)
  run_s = sum(t["run_s"] for t in pipe.timings)
  log(f"{n_images} image(s): compile {compile_s:.1f}s, sampling {run_s:.1f}s "
      f"({run_s / max(n_images, 1):.2f}s per image)")


def next_free_folder(root: Path = Path("samples")) -> Path:
  """root/001, root/002, ...: the first that does not exist yet."""
  taken = {int(p.name) for p in root.glob("[0-9][0-9][0-9]*") if p.name.isdigit()} if root.is_dir() else set()
  return root / f"{max(taken, default=0) + 1:03d}"


def main(argv: Sequence[str]) -> int:
  argv = list(argv)
  mode = argv[0] if argv and argv[0] in MODES else None
  args = _parser(mode).parse_args(argv[1:] if mode else argv)
  xla_flags.apply_defaults()  # XLA CPU defaults unless XLA_FLAGS is set; before JAX starts (README "Benchmarks")
  xla_flags.enable_compile_cache()  # compiled programs kept between runs (README "Benchmarks")
  if args.out is None:
    args.out = str(next_free_folder())
  args.demo_default = args.checkpoint is None and not (mode is None and args.from_sidecar)
  if args.demo_default:
    args.checkpoint = str(default_pipeline())
  log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
  if mode == "variations":
    written = run_variations(args, log)
  elif mode == "interpolate":
    written = run_interpolate(args, log)[0]
  elif mode == "textdiff":
    written = run_textdiff(args, log)
  else:
    written = run_text(args, log)
  pngs = [p for p in written if p.suffix == ".png"]
  print(f"wrote {len(pngs)} PNG(s) and {len(written) - len(pngs)} other file(s) to {args.out}")
  return 0


if __name__ == "__main__":
  run_cli(main, sys.argv[1:])
