"""The guidance suite: how decoder (and prior) classifier-free guidance trades fidelity for alignment.

For each (prior guidance, decoder guidance) pair, the same prompts (every compositional task, seen and
held-out) and seeds are sampled; each setting gets FD to the prompts' real renders (evaluator network
features), compositional accuracy (the detector) and CLIP score (the evaluator CLIP). Written as JSON
and as a PNG with FD on the x axis (matplotlib, imported only here).
"""

from __future__ import annotations

from pathlib import Path

from unclip_jax.eval import frechet, prompts
from unclip_jax.eval.alignment import clip_score_of
from unclip_jax.eval.compositional import grade
from unclip_jax.eval.stats import proportion


def run(ctx) -> dict:
  from tqdm.auto import tqdm

  o = ctx.options
  n = max(o.guidance_num or o.num, 3)
  captions, real, _, tasks, _ = prompts.balanced_set(n, o.seed, "guidance")
  seeds = prompts.image_seeds("guidance", n, o.seed)
  f_real = ctx.feature_net.features(real)
  points = []
  grid = [(pg, dg) for pg in o.prior_guidance for dg in o.decoder_guidance]
  for pg, dg in tqdm(grid, desc="guidance settings", leave=False, disable=not o.progress):
    images = ctx.generate(captions, seeds, {"prior": {"guidance_scale": pg}, "decoder": {"guidance_scale": dg}},
                          desc=f"prior {pg:g} / decoder {dg:g}")
    checks = grade(images, captions)
    points.append({"prior_guidance": pg, "decoder_guidance": dg,
                   "fd": frechet.frechet_distance(ctx.feature_net.features(images), f_real),
                   "compositional_accuracy": proportion(c["pass"] for c in checks),
                   "clip_score": clip_score_of(ctx, images, captions)})
  return {"points": points, "num": n, "real_clip_score": clip_score_of(ctx, real, captions),
          "real_compositional_accuracy": proportion(c["pass"] for c in grade(real, captions)),
          "tasks": sorted(set(tasks))}


def plot(result: dict, path: str | Path) -> str | None:
  """Writes the FD-vs-accuracy and FD-vs-CLIP-score plot; returns None, or why it could not."""
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
  except ImportError:
    return "matplotlib is not installed (pip install matplotlib); the guidance plot was skipped"
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for pg in sorted({p["prior_guidance"] for p in result["points"]}):
    pts = [p for p in result["points"] if p["prior_guidance"] == pg]
    fd = [p["fd"] for p in pts]
    for ax, ys in ((axes[0], [p["compositional_accuracy"]["rate"] for p in pts]),
                   (axes[1], [p["clip_score"] for p in pts])):
      ax.plot(fd, ys, "o-", label=f"prior guidance {pg:g}")
      for p, x, y in zip(pts, fd, ys):
        ax.annotate(f"{p['decoder_guidance']:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
  axes[0].axhline(result["real_compositional_accuracy"]["rate"], color="gray", ls="--", lw=1, label="real images")
  axes[1].axhline(result["real_clip_score"], color="gray", ls="--", lw=1, label="real images")
  axes[0].set(xlabel="FD (evaluator CNN features)", ylabel="compositional accuracy", title="accuracy vs FD")
  axes[1].set(xlabel="FD (evaluator CNN features)", ylabel="CLIP score (evaluator CLIP)", title="CLIP score vs FD")
  for ax in axes:
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(5))
    ax.ticklabel_format(axis="x", useOffset=False)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
  fig.suptitle(f"decoder guidance (labels) x prior guidance, {result['num']} prompts each")
  fig.tight_layout()
  Path(path).parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return None
