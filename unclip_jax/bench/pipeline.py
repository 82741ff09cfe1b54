"""`python -m unclip_jax.bench pipeline`: the full text → image pipeline with random weights, timed.

    python -m unclip_jax.bench pipeline --preset karlo --batch 1,8      (on a GPU/TPU)
    python -m unclip_jax.bench pipeline --preset tiny --batch 1,8       (CPU smoke run)

For each global batch size: compile time of the pipeline program (text encoder, prior, decoder and
upsamplers compiled as one, as `python -m unclip_jax.sample` runs them; first call), sampling time
(median of `--repeats` further calls with other seeds, program reused), seconds per image, and the peak device memory
(`jax.devices()[0].memory_stats()["peak_bytes_in_use"]`, where the backend reports it). `--stages` also
runs the stages as separate programs, one after another, and reports each one's compile and sampling
time (where the time goes; the peak memory then covers both runs). Steps and
guidance are the pipeline's defaults (Karlo: 25/25/7, guidance 4 and 8) unless given. Random weights
are enough here: the cost of sampling does not depend on the values of the parameters.
"""

from __future__ import annotations

import json
import platform
import time

import jax
import numpy as np

from unclip_jax.bench.memory import device_peak_bytes, gib
from unclip_jax.errors import ArgumentParser, UserError, positive_ints


def _parse(argv):
  p = ArgumentParser(prog="python -m unclip_jax.bench pipeline", description=__doc__.splitlines()[0])
  p.add_argument("--preset", default="tiny", choices=("tiny", "karlo"))
  p.add_argument("--batch", default="1,8", help="comma-separated global batch sizes (padded to the device count)")
  p.add_argument("--prior-steps", default=None)
  p.add_argument("--decoder-steps", default=None)
  p.add_argument("--sr-steps", default=None)
  p.add_argument("--prior-candidates", type=int, default=1)
  p.add_argument("--dtype", default=None, choices=("float32", "bfloat16"),
                 help="compute dtype (default: each stage config's: bfloat16 for random karlo, float32 for tiny; "
                      "converted Karlo checkpoints say float32)")
  p.add_argument("--stages", action="store_true", help="also time each stage as its own program")
  p.add_argument("--repeats", type=int, default=3, help="timed calls after the first; medians are reported")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--json", default=None, help="also write the results to this JSON file")
  return p.parse_args(argv)


def _stage_totals(timings: list[dict]) -> dict:
  out = {}
  for t in timings:
    d = out.setdefault(t["stage"], {"compile_s": 0.0, "run_s": 0.0})
    d["compile_s"] += t["compile_s"]
    d["run_s"] += t["run_s"]
  return {k: {kk: round(vv, 4) for kk, vv in v.items()} for k, v in out.items()}


def _staged(pipe, prompts: list[str], seeds: list[int], settings, candidates: int) -> None:
  """The stages as separate programs, each timed into `pipe.timings` by the pipeline."""
  from unclip_jax.pipeline import image_keys

  keys = image_keys(seeds)
  text = pipe.encode_text(prompts)
  emb = pipe.sample_prior(text, keys, settings["prior"], candidates=candidates)
  pipe.upsample(pipe.decode(emb, text, keys, settings["decoder"]), keys, settings)


def _timed(pipe, call, r: int):
  """(the pipeline's timings of `call(r)`, its wall seconds, its result)."""
  pipe.timings = []
  start = time.perf_counter()
  result = call(r)
  return list(pipe.timings), time.perf_counter() - start, result


def run(preset: str, batches: list[int], *, overrides: dict, candidates: int = 1, dtype: str | None = None,
        seed: int = 0, stages: bool = False, repeats: int = 3, log=print) -> dict:
  from unclip_jax.pipeline import Pipeline

  start = time.perf_counter()
  pipe = Pipeline.random(preset, seed, dtype=dtype, log=lambda m: None)
  build_s = time.perf_counter() - start
  settings = pipe.settings(overrides)
  log(f"{preset}: random weights built in {build_s:.1f}s on {pipe.n_devices} {jax.devices()[0].platform} "
      f"device(s); output {pipe.output_size}px; steps " + ", ".join(f"{k} {v.steps}" for k, v in settings.items()))
  results = []
  for b in batches:
    prompts = [f"a photo of object number {i}" for i in range(b)]
    seeds = lambda r: [seed + r * b + i for i in range(b)]  # noqa: E731 - other seeds for every call
    generate = lambda r: pipe.generate(prompts, seeds(r), settings, candidates=candidates)  # noqa: E731
    first, first_s, _ = _timed(pipe, generate, 0)
    calls = [_timed(pipe, generate, r + 1) for r in range(repeats)]
    compile_s = sum(t["compile_s"] for t in first)
    run_s = float(np.median([sum(t["run_s"] for t in c[0]) for c in calls]))
    out = calls[-1][2]
    row = {"batch": b, "rows": int(out["rows"]), "compile_s": round(compile_s, 3),
           "first_call_s": round(first_s, 3), "repeats": repeats, "sampling_s": round(run_s, 4),
           "wall_s": round(float(np.median([c[1] for c in calls])), 4), "s_per_image": round(run_s / b, 4),
           "peak_bytes": device_peak_bytes(), "program": first[0]["stage"],
           "finite": bool(np.isfinite(out["small"]).all())}
    log(f"batch {b:4d}: compile {compile_s:7.2f}s  sampling {run_s:8.3f}s  {row['s_per_image']:.4f} s/image  "
        f"peak memory {gib(row['peak_bytes'])}")
    if stages:
      pipe._uncond = None  # noqa: SLF001 - the empty caption's encoding counts as text-encoder time
      staged = lambda r: _staged(pipe, prompts, seeds(r), settings, candidates)  # noqa: E731
      first, _, _ = _timed(pipe, staged, 0)
      calls = [_timed(pipe, staged, r + 1) for r in range(repeats)]
      row["stages_wall_s"] = round(float(np.median([c[1] for c in calls])), 4)
      row["stages_first_call"] = _stage_totals(first)
      row["stages"] = {k: {"compile_s": 0.0, "run_s": round(float(np.median([_stage_totals(c[0])[k]["run_s"]
                                                                              for c in calls])), 4)}
                       for k in _stage_totals(calls[0][0])}
      row["peak_bytes_with_stages"] = device_peak_bytes()
      log(f"            stages as separate programs: wall {row['stages_wall_s']:.3f}s (one program: "
          f"{row['wall_s']:.3f}s)  " + "  ".join(f"{k} compile {v['compile_s']:.2f}s run {row['stages'][k]['run_s']:.3f}s"
                                                for k, v in row["stages_first_call"].items()))
    results.append(row)
  return {"benchmark": "pipeline", "preset": preset, "dtype": dtype or "config", "devices": pipe.n_devices,
          "device": str(jax.devices()[0].device_kind), "platform": jax.devices()[0].platform,
          "host": platform.node(), "jax": jax.__version__, "build_s": round(build_s, 2),
          "settings": {k: v.to_dict() for k, v in settings.items()}, "prior_candidates": candidates,
          "results": results}


def main(argv) -> int:
  args = _parse(list(argv))
  batches = positive_ints(args.batch, "--batch")
  if not 1 <= args.repeats <= 100:
    raise UserError(f"--repeats must lie between 1 and 100, got {args.repeats}")
  from unclip_jax.pipeline import check_steps

  overrides = {"prior": {}, "decoder": {}, "sr_64_256": {}}
  for flag, stage in ((args.prior_steps, "prior"), (args.decoder_steps, "decoder"), (args.sr_steps, "sr_64_256")):
    if flag is not None:
      overrides[stage]["steps"] = check_steps(flag, f"--{stage.replace('_', '-')}-steps")
  report = run(args.preset, batches, overrides=overrides, candidates=args.prior_candidates, dtype=args.dtype,
               seed=args.seed, stages=args.stages, repeats=args.repeats)
  if args.json:
    from unclip_jax.io import write_text_atomic
    write_text_atomic(args.json, json.dumps(report, indent=2))
  return 0
