"""The zeroshot suite: the generator's CLIP as a zero-shot classifier (prompt ensembling as in
`python -m unclip_jax.zeroshot`).

Why: the prior and decoder can only be as compositional as the CLIP embeddings they are conditioned
on; probing colour, shape and colour+shape on single-object scenes (seen and held-out combinations)
shows what the embedding space separates. Where installed, Fashion-MNIST's test split (10 classes, its
caption templates) and the emoji data's held-out (style, concept) pairs (which of 4 styles, from
"a noto emoji of cat face"-style captions) are probed too; otherwise they are skipped with a note.

Zero-shot compares an image with the text embeddings of its own candidate captions, held-out ones
included, so it can be perfect on held-out pairs while a network conditioned on the image embedding (the
decoder) still cannot read them: that network learnt its rules from seen pairs only. `linear_probe_transfer`
measures that directly: colour and shape read from the image embedding by linear probes fit on seen pairs.

`word_order_probe` asks whether the CLIP reads word order at all (ARO's question, Yuksekgonul et al. 2023):
does a scene's image embedding prefer its caption to the same words saying something else, the relation
flipped, the colours of two objects swapped, another count (`unclip_jax.data.hard_negatives`)? A CLIP that
scores near chance there hands the prior and decoder a bag of words: position, binding and counting are
then lost before either is trained. `train.hard_negatives` trains CLIP against exactly these.

`placement_probe` asks the question under that one for position: does the image embedding say where things
are? A linear probe reads a single object's quadrant (and its centre, as R²), and in two-object position
scenes which side of the other the first object lies on, along the relation's axis, with the objects
ordered by (colour, shape), not by the caption ("a red circle above a blue square" and "a blue square below
a red circle" are one picture). An embedding that carries no placement leaves position to the words alone.
"""

from __future__ import annotations

import numpy as np

from unclip_jax.data import hard_negatives, shapes
from unclip_jax.errors import UserError
from unclip_jax.eval import prompts
from unclip_jax.eval.stats import proportion


def _objects(specs) -> list[tuple[str, str]]:
  """The (colour, shape) of each single-object scene spec."""
  return [(s["objects"][0]["color"], s["objects"][0]["shape"]) for s in specs]


def shapes_probes(scorer, n: int, seed: int, image_size: int | None = None) -> dict:
  """Colour, shape and colour+shape of single-object scenes, rendered at `image_size` (default: the CLIP's
  own input size, as it saw scenes in training; 64 px renders resized to a 32 px CLIP are a resolution
  shift its training never had, reported separately by `run`)."""
  image_size = image_size or int(scorer.config.image_size)
  colors, kinds = list(shapes.COLORS), list(shapes.SHAPES)
  objects = [(c, s) for c in colors for s in kinds]
  probes = {  # name: (labels, templates, truth of an object, classes)
      "colour": (colors, [f"a {{}} {s}" for s in kinds], lambda o: colors.index(o[0])),
      "shape": (kinds, [f"a {c} {{}}" for c in colors], lambda o: kinds.index(o[1])),
      "colour_shape": ([f"{c} {s}" for c, s in objects], ["a {}"], objects.index),
  }
  out = {}
  for split in prompts.SPLITS:
    _, images, specs = prompts.task_set("single", split, n, seed + 77, image_size)
    truth_objects = _objects(specs)
    out[split] = {}
    for name, (labels, templates, truth) in probes.items():
      pred = scorer.zero_shot(images, labels, templates)
      out[split][name] = {**proportion(pred == np.array([truth(o) for o in truth_objects])), "chance": 1 / len(labels)}
  return out


WORD_ORDER = {  # compositional task whose scenes are probed: the kind of perturbation
    "position": "relation", "binding": "color", "counting": "count"}


def word_order_probe(scorer, n: int, seed: int, image_size: int | None = None) -> dict:
  """Per task and split: how often a scene's image embedding has a higher cosine with its caption than with
  every perturbation of it (strictly: a tie is a miss), over the first `n` scenes that have one."""
  image_size = image_size or int(scorer.config.image_size)
  out = {}
  for task, kind in WORD_ORDER.items():
    out[task] = {"perturbation": kind}
    for split in prompts.SPLITS:
      captions, images, _ = prompts.task_set(task, split, 2 * n, seed + 91, image_size)
      keep = [i for i, c in enumerate(captions) if hard_negatives.perturbations(c, (kind,))][:n]
      if not keep:
        continue
      captions, images = [captions[i] for i in keep], images[keep]
      wrong = [hard_negatives.perturbations(c, (kind,)) for c in captions]
      img = _unit(scorer.encode_images(images))[:, :-1]
      cos = lambda texts: _unit(scorer.encode_captions(texts))[:, :-1]  # noqa: E731
      own = np.sum(img * cos(captions), axis=-1)
      flat = [w for ws in wrong for w in ws]
      rows = np.repeat(np.arange(len(captions)), [len(ws) for ws in wrong])
      other = np.full(len(captions), -np.inf)
      np.maximum.at(other, rows, np.sum(img[rows] * cos(flat), axis=-1))
      out[task][split] = {**proportion(own > other), "chance": float(np.mean([1 / (1 + len(ws)) for ws in wrong]))}
  return out


PROBE_FIT_PER_OBJECT = 20  # seen renders per seen (colour, shape) pair that the linear probes are fit on
PROBE_RIDGE = 1e-3


def _unit(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return np.c_[x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12), np.ones(len(x))]


def _ridge(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """Weights of a ridge regression from rows of `x` (unit embedding + bias) to targets `y`."""
  return np.linalg.solve(x.T @ x + PROBE_RIDGE * len(x) * np.eye(x.shape[1]), x.T @ y)


def linear_probe_transfer(scorer, n: int, seed: int, image_size: int | None = None) -> dict:
  """Colour and shape of single-object scenes read from the CLIP image embedding by ridge-regression
  probes (unit-norm embedding + bias → one-hot class) fit on seen pairs only, then scored on `n` new seen
  and `n` held-out scenes. High on seen and low on held-out: the embedding codes an unseen pair's colour
  or shape in a way the rules learnt from seen pairs do not read (entangled with the other attribute)."""
  image_size = image_size or int(scorer.config.image_size)
  seen_pairs = len(shapes.COLORS) * len(shapes.SHAPES) - len(shapes.HELDOUT_OBJECTS)
  fit_scenes = shapes.ShapesScenes(image_size, "train", prompts.PROMPT_SEED + seed * 31 + 5, ("single",))
  fit_images, _, fit_specs = fit_scenes.batch(0, PROBE_FIT_PER_OBJECT * seen_pairs)
  fit_x, fit_objects = _unit(scorer.encode_images(fit_images)), _objects(fit_specs)
  tests = {}
  for split in prompts.SPLITS:
    _, images, specs = prompts.task_set("single", split, n, seed + 77, image_size)
    tests[split] = (_unit(scorer.encode_images(images)), _objects(specs))
  out = {"fit_scenes": len(fit_objects), "fit_pairs": seen_pairs}
  for attribute, index, classes in (("colour", 0, list(shapes.COLORS)), ("shape", 1, list(shapes.SHAPES))):
    weights = _ridge(fit_x, np.eye(len(classes))[[classes.index(o[index]) for o in fit_objects]])
    out[attribute] = {}
    for split, (x, objects) in tests.items():
      truth = np.array([classes.index(o[index]) for o in objects])
      out[attribute][split] = {**proportion((x @ weights).argmax(-1) == truth), "chance": 1 / len(classes)}
  return out


PLACEMENT_FIT = 400  # seen scenes each placement probe is fit on
RELATION_SIDES = ("left of", "right of", "above", "below")


def _centres(specs, size: int) -> np.ndarray:
  """(n, 2) centre (x, y) of each single-object scene's object, in [0, 1] of the image."""
  return np.array([[(b[0] + b[2]) / 2, (b[1] + b[3]) / 2] for b in (s["objects"][0]["bbox"] for s in specs)]) / size


def _quadrants(centres: np.ndarray) -> np.ndarray:
  return (centres[:, 0] >= 0.5).astype(int) + 2 * (centres[:, 1] >= 0.5).astype(int)


def canonical_side(spec: dict) -> int:
  """Index in RELATION_SIDES of where a position scene's first object, by (colour, shape), lies relative to
  the other: the relation without the caption's word order."""
  objs, rel = spec["objects"], spec["relation"]
  a, b = objs[rel["subject"]], objs[rel["object"]]
  first_is_subject = (a["color"], a["shape"]) <= (b["color"], b["shape"])
  side = rel["relation"] if first_is_subject else hard_negatives.RELATION_OPPOSITES[rel["relation"]]
  return RELATION_SIDES.index(side)


def placement_probe(scorer, n: int, seed: int, image_size: int | None = None) -> dict:
  """Where objects are, read from the image embedding by ridge probes fit on `PLACEMENT_FIT` seen scenes and
  scored on `n` new seen and `n` held-out ones: a single object's quadrant (with the R² of its centre), and
  in position scenes the canonical side (`canonical_side`) along the relation's axis, one probe per axis
  (across it the builder places the pair at random, so a picture can show both "left of" and "above"). Both
  at chance: the embedding does not carry placement, so no prior or decoder conditioned on it can place
  objects from it."""
  image_size = image_size or int(scorer.config.image_size)
  out = {"fit_scenes": PLACEMENT_FIT}
  for name, task in (("single_quadrant", "single"), ("position_side", "position")):
    kind = prompts.TASKS[task]
    fit = shapes.ShapesScenes(image_size, "train", prompts.PROMPT_SEED + seed * 31 + 7, (kind,))
    fit_images, _, fit_specs = fit.batch(0, PLACEMENT_FIT)
    tests = {}
    for split in prompts.SPLITS:
      _, images, specs = prompts.task_set(task, split, n, seed + 83, image_size)
      tests[split] = (_unit(scorer.encode_images(images)), specs)
    fit_x = _unit(scorer.encode_images(fit_images))
    if task == "single":
      centres = _centres(fit_specs, image_size)
      weights = _ridge(fit_x, np.c_[np.eye(4)[_quadrants(centres)], centres])
      out[name] = {"chance": 0.25, "centre_r2": {}}
      for split, (x, specs) in tests.items():
        pred, truth = x @ weights, _centres(specs, image_size)
        out[name][split] = proportion(pred[:, :4].argmax(-1) == _quadrants(truth))
        resid = ((pred[:, 4:] - truth) ** 2).sum(0) / np.maximum(((truth - truth.mean(0)) ** 2).sum(0), 1e-12)
        out[name]["centre_r2"][split] = [float(1 - r) for r in resid]
    else:  # along the relation's own axis only: the builder places the pair apart there, at random across it
      fit_sides = np.array([canonical_side(s) for s in fit_specs])
      weights = [_ridge(fit_x[fit_sides // 2 == axis], np.eye(2)[fit_sides[fit_sides // 2 == axis] % 2])
                 for axis in (0, 1)]
      out[name] = {"chance": 0.5}
      for split, (x, specs) in tests.items():
        sides = np.array([canonical_side(s) for s in specs])
        pred = np.array([(row @ weights[side // 2]).argmax() for row, side in zip(x, sides)])
        out[name][split] = proportion(pred == sides % 2)
  return out


def fashion_mnist_probe(scorer, n: int, seed: int) -> dict:
  from unclip_jax.data import builders

  images, labels = builders.fashion_mnist_arrays(builders.FASHION_MNIST_SOURCE, "test")
  idx = np.random.default_rng(seed).choice(len(images), min(n, len(images)), replace=False)
  rgb = np.repeat(images[idx][..., None], 3, axis=-1)
  pred = scorer.zero_shot(rgb, builders.FASHION_MNIST_CLASSES, builders.FASHION_MNIST_TEMPLATES)
  return {**proportion(pred == labels[idx]), "chance": 1 / len(builders.FASHION_MNIST_CLASSES),
          "source": builders.FASHION_MNIST_SOURCE}


def emoji_style_probe(scorer, n: int, seed: int, source: str | None = None) -> dict:
  """Which of the 4 styles a held-out (style, concept) emoji is drawn in, by its 4 possible captions."""
  import os

  from unclip_jax.data import emoji as emoji_lib

  source = source or os.environ.get(emoji_lib.SOURCE_ENV) or str(emoji_lib.DEFAULT_SOURCE)
  icon_sets = emoji_lib.load_styles(source)
  held = sorted(emoji_lib.heldout_pairs(emoji_lib.common_concepts(icon_sets), 0.05))
  if not held:
    raise UserError("no held-out emoji pairs")
  pick = [held[i] for i in np.random.default_rng(seed).choice(len(held), min(n, len(held)), replace=False)]
  by_name = {s.style.name: s for s in icon_sets}
  images = np.stack([emoji_lib.render(by_name[st].icons[c], 64) for st, c in pick])
  styles = [s.style for s in icon_sets]
  img = scorer.encode_images(images)
  txt = scorer.encode_text([emoji_lib.caption(st, c) for _, c in pick for st in styles])
  txt = txt.reshape(len(pick), len(styles), -1)
  img = img / np.linalg.norm(img, axis=-1, keepdims=True)
  txt = txt / np.linalg.norm(txt, axis=-1, keepdims=True)
  pred = np.einsum("nd,nkd->nk", img, txt).argmax(-1)
  truth = np.array([[s.name for s in styles].index(st) for st, _ in pick])
  return {**proportion(pred == truth), "chance": 1 / len(styles), "source": str(source), "heldout_pairs": len(held)}


def run(ctx) -> dict:
  o = ctx.options
  scorer = ctx.generator_clip
  out = {"clip": "the generator's CLIP (pipeline stage 'clip')", "shapes": shapes_probes(scorer, o.num, o.seed),
         "image_size": int(scorer.config.image_size), "linear_probe": linear_probe_transfer(scorer, o.num, o.seed),
         "word_order": word_order_probe(scorer, o.num, o.seed), "placement": placement_probe(scorer, o.num, o.seed)}
  if out["image_size"] != prompts.IMAGE_SIZE:
    out["shapes_resized_from_64px"] = shapes_probes(scorer, o.num, o.seed, prompts.IMAGE_SIZE)
  if not o.zeroshot_extra:
    out["skipped"] = {"fashion_mnist": "not asked for", "emoji": "not asked for"}
    return out
  skipped = {}
  for name, fn in (("fashion_mnist", fashion_mnist_probe), ("emoji_heldout_style", emoji_style_probe)):
    try:
      out[name] = fn(scorer, o.num, o.seed)
    except UserError as e:  # the data is not installed: say so and go on
      skipped[name] = str(e)
      ctx.log(f"zeroshot: skipping {name}: {e}")
  if skipped:
    out["skipped"] = skipped
  return out
