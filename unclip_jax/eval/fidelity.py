"""The fd suite: how close generated images are to real ones, in the evaluator network's feature space.

Reports FD and KID between images generated from held-out captions and the real held-out images of the
same captions, with the floor a second, disjoint set of real held-out images reaches (FD is biased
upwards at small N, so the floor is the number to compare with); precision and recall (k = 3, fewer
for tiny N); and memorisation: images generated from train-split captions against `train_ref` images
drawn exactly as the generator's training data (the shapes builder's seed, default 0), next to fresh
real images of that distribution as the reference for a model that does not copy.
"""

from __future__ import annotations

from unclip_jax.data import shapes
from unclip_jax.eval import frechet, manifold, prompts


def fd_metrics(gen_features, real_features) -> dict:
  n = min(len(gen_features), len(real_features))
  kid = frechet.kid(gen_features, real_features, subsets=50, subset_size=1000)
  return {"fd": frechet.frechet_distance(gen_features, real_features), "kid": kid["mean"], "kid_std": kid["std"],
          **manifold.precision_recall(real_features, gen_features, k=max(1, min(3, n - 1)))}


def run(ctx) -> dict:
  o = ctx.options
  net = ctx.feature_net
  held, seen = ctx.mixed("heldout"), ctx.mixed("seen")
  n = len(held["captions"])
  if n < 2:
    raise ValueError("the fd suite needs --num >= 2")
  _, real2, _ = prompts.mixed_set("heldout", n, o.seed, "fd-floor", kinds=shapes.ALL_KINDS)
  f_gen, f_real, f_real2 = net.features(held["generated"]), net.features(held["real"]), net.features(real2)
  m = max(o.train_ref, 2)
  train_images, _, _ = shapes.ShapesScenes(prompts.IMAGE_SIZE, "train", o.dataset_seed).batch(0, m)
  _, fresh, _ = prompts.mixed_set("seen", n, o.seed, "memorisation-reference", kinds=shapes.ALL_KINDS)
  f_train = net.features(train_images)
  return {
      "generated_vs_real": fd_metrics(f_gen, f_real),
      "real_vs_real_floor": fd_metrics(f_real2, f_real),
      "memorisation": manifold.memorisation(net.features(seen["generated"]), f_train),
      "memorisation_real_reference": manifold.memorisation(net.features(fresh), f_train),
      "num": n, "train_ref": m,
      "train_ref_source": f"shapes train split, seed {o.dataset_seed}, indices 0..{m - 1} (the builder's images)",
      "evaluator": {"kind": "our shapes CNN (features.py)", "heldout_accuracy": net.meta.get("heldout_accuracy"),
                    "train_seconds": net.meta.get("train_seconds"), "config": net.meta.get("config")},
  }
