"""`python -m unclip_jax.bench sampler`: what the diffusion machinery itself costs, and whether it is right.

The model is the closed-form optimal denoiser for Gaussian data (`diffusion.oracle`), so the numbers
isolate the sampler: compile time (once per shape), milliseconds per step of the `lax.scan` against a
Python loop over the same jitted step, and the error of the sampled mean and std against the known
answer. The batch is split over all local devices with `jax.pmap` of the same sampling function, as
the full pipeline does.
"""

from __future__ import annotations

import json
import math
import time

import jax
import numpy as np

from unclip_jax import diffusion as D
from unclip_jax.diffusion.oracle import gaussian_optimal_model
from unclip_jax.diffusion.samplers import SAMPLERS
from unclip_jax.errors import ArgumentParser, UserError
from unclip_jax.io import write_text_atomic


def _parse(argv):
  p = ArgumentParser(prog="python -m unclip_jax.bench sampler", description=__doc__.splitlines()[0])
  p.add_argument("--steps", default="25,50,250", help="comma-separated respacings, e.g. '25,ddim50,250'")
  p.add_argument("--samplers", default="ddpm,ddim", help="comma-separated: ddpm, ddim")
  p.add_argument("--batch", type=int, default=64, help="global batch (split over local devices)")
  p.add_argument("--size", type=int, default=64, help="image side: samples are (batch, size, size, 3)")
  p.add_argument("--repeats", type=int, default=3, help="timed runs per case (median reported)")
  p.add_argument("--json", default=None, help="also write the results to this JSON file")
  return p.parse_args(argv)


def _median_time(fn, repeats):
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def run_case(spacing: str, sampler: str, batch: int, size: int, repeats: int) -> dict:
  n_dev = jax.local_device_count()
  if batch % n_dev:
    raise UserError(f"--batch {batch} must be a multiple of the {n_dev} local devices")
  variance = "learned_range" if sampler == "ddpm" else "fixed_small"
  base = D.GaussianDiffusion.from_betas(D.get_betas("cosine"), variance=variance)
  try:
    process = base.respace(spacing)
  except ValueError as e:
    raise UserError(f"--steps: {e}") from None
  mu = np.linspace(-0.5, 0.5, 3).astype(np.float32)
  s = np.array([0.3, 0.5, 0.8], np.float32)
  model = gaussian_optimal_model(process, mu, s)
  local_shape = (batch // n_dev, size, size, 3)

  def draw(key):
    return D.sample(process, model, local_shape, key, sampler=sampler)

  keys = jax.random.split(jax.random.key(0), n_dev)
  pdraw = jax.pmap(draw)
  start = time.perf_counter()
  compiled = pdraw.lower(keys).compile()
  compile_s = time.perf_counter() - start
  out = np.asarray(compiled(keys)).reshape(-1, 3)
  scan_s = _median_time(lambda: compiled(keys), repeats)

  guided = lambda x, t: model(x, t, None)  # noqa: E731
  step = jax.pmap(lambda x, i, k: D.denoising_step(process, guided, x, i, k, sampler=sampler)[0],
                  in_axes=(0, None, 0))
  x_T = jax.pmap(lambda k: jax.random.normal(k, local_shape))(keys)
  step_keys = jax.pmap(lambda k: jax.random.split(k, process.num_timesteps))(keys)

  def loop():
    x = x_T
    for j, i in enumerate(range(process.num_timesteps - 1, -1, -1)):
      x = step(x, i, step_keys[:, j])
    return x

  jax.block_until_ready(loop())  # compile the step
  loop_s = _median_time(loop, max(1, repeats - 1))
  return dict(steps=spacing, sampler=sampler, variance=variance, n_steps=process.num_timesteps, batch=batch,
              size=size, devices=n_dev, compile_s=round(compile_s, 3),
              scan_ms_per_step=round(1e3 * scan_s / process.num_timesteps, 3),
              loop_ms_per_step=round(1e3 * loop_s / process.num_timesteps, 3),
              mean_err=float(np.abs(out.mean(0) - mu).max()), std_ratio_err=float(np.abs(out.std(0) / s - 1).max()))


def main(argv) -> int:
  args = _parse(argv)
  if args.batch < 1 or args.size < 1 or args.repeats < 1:
    raise UserError("--batch, --size and --repeats must be positive")
  samplers = [s.strip() for s in args.samplers.split(",") if s.strip()]
  for s in samplers:
    if s not in SAMPLERS:
      raise UserError(f"unknown sampler {s!r} in --samplers; choose from {', '.join(SAMPLERS)}")
  spacings = [s.strip() for s in args.steps.split(",") if s.strip()]
  print(f"devices: {jax.local_device_count()} x {jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"jax {jax.__version__}")
  header = f"{'steps':>8} {'sampler':>7} {'batch':>5} {'size':>4} {'compile s':>9} {'scan ms/step':>12} " \
           f"{'loop ms/step':>12} {'mean err':>8} {'std err':>7}"
  print(header)
  rows = []
  for spacing in spacings:
    for sampler in samplers:
      r = run_case(spacing, sampler, args.batch, args.size, args.repeats)
      rows.append(r)
      print(f"{r['steps']:>8} {r['sampler']:>7} {r['batch']:>5} {r['size']:>4} {r['compile_s']:>9.2f} "
            f"{r['scan_ms_per_step']:>12.3f} {r['loop_ms_per_step']:>12.3f} {r['mean_err']:>8.4f} "
            f"{r['std_ratio_err']:>7.4f}", flush=True)
  if args.json:
    write_text_atomic(args.json, json.dumps(dict(backend=jax.default_backend(), results=rows), indent=2))
  # Ancestral sampling with the exact (learned-range) variance is exact for any spacing, so only
  # sampling noise separates it from the answer; DDIM's discretisation error is reported, not judged.
  bad = [r for r in rows if r["sampler"] == "ddpm" and not r["std_ratio_err"] < 0.05]
  bad += [r for r in rows if not (math.isfinite(r["mean_err"]) and math.isfinite(r["std_ratio_err"]))]
  if bad:
    print(f"FAILED: {len(bad)} case(s) did not reproduce the known answer")
    return 1
  print("ok: ancestral sampling reproduced the Gaussian data (std within 5%)")
  return 0
