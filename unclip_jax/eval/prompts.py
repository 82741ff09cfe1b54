"""Evaluation prompt sets: `shapes` captions with their ground-truth renders, by task and split.

Why from the scene generator: every caption comes with a real image drawn to it (the ceiling any
metric can reach) and a spec to check it against. "seen" prompts are drawn from the train split (only
colour-shape and relation-shape combinations that occur in training), "heldout" prompts from the
held-out split (each uses a combination never in training). The scenes use their own seed (never the
dataset's 0), so the real images are not the generator's training images; the captions, from a small
grammar, naturally recur.
"""

from __future__ import annotations

import hashlib

import numpy as np

from unclip_jax.data import shapes

# task name -> the scene generator's caption kind
TASKS = {"single": "single", "binding": "pair", "counting": "count", "position": "relation",
         "negation": shapes.NEGATION}
SPLITS = {"seen": "train", "heldout": "heldout"}
IMAGE_SIZE = 64
PROMPT_SEED = 0xE7A1


def _scene_seed(seed: int, label: str) -> int:
  return PROMPT_SEED + seed * 7919 + int(hashlib.sha256(label.encode()).hexdigest()[:6], 16)


def image_seeds(label: str, n: int, seed: int) -> list[int]:
  """Per-image sampling seeds for a named cell of an evaluation: distinct across cells, fixed by `seed`."""
  base = (int(hashlib.sha256(f"{label}/{seed}".encode()).hexdigest()[:7], 16) * 64) % (2 ** 32 - n - 1)
  return [base + i for i in range(n)]


def task_set(task: str, split: str, n: int, seed: int = 0,
             image_size: int = IMAGE_SIZE) -> tuple[list[str], np.ndarray, list[dict]]:
  """(captions, real uint8 (n, S, S, 3), specs) of one task on "seen" or "heldout" combinations, rendered
  at S = `image_size` (64 px, the generated images' size, unless asked otherwise)."""
  scenes = shapes.ShapesScenes(image_size, SPLITS[split], _scene_seed(seed, f"{task}/{split}"), (TASKS[task],))
  images, captions, specs = scenes.batch(0, n)
  return captions, images, specs


def mixed_set(split: str, n: int, seed: int = 0, label: str = "mixed", kinds=shapes.KINDS,
              image_size: int = IMAGE_SIZE):
  """(captions, real images, specs): n scenes of the given split with caption kinds drawn uniformly (the
  dataset's own mix by default), rendered at `image_size` (the layouts do not depend on it)."""
  scenes = shapes.ShapesScenes(image_size, SPLITS[split], _scene_seed(seed, f"{label}/{split}"), tuple(kinds))
  images, captions, specs = scenes.batch(0, n)
  return captions, images, specs


def another_render(specs: list[dict], seed: int, label: str, image_size: int = IMAGE_SIZE) -> np.ndarray:
  """uint8 (n, S, S, 3): for each spec a second real image of its caption, at a new layout."""
  base = _scene_seed(seed, f"{label}/again")
  images = []
  for i, spec in enumerate(specs):
    scenes = shapes.ShapesScenes(image_size, spec["split"], base)
    images.append(scenes.redraw(spec, np.random.default_rng([base, i]))[0])
  return np.stack(images)


def balanced_set(n: int, seed: int = 0, label: str = "balanced"):
  """(captions, real images, specs, tasks, splits): n prompts cycling over every task and both splits."""
  cells = [(t, s) for t in TASKS for s in SPLITS]
  per_cell = {c: sum(1 for i in range(n) if cells[i % len(cells)] == c) for c in cells}
  sets = {c: task_set(c[0], c[1], per_cell[c], seed + 1000) for c in cells if per_cell[c]}
  taken = {c: 0 for c in cells}
  captions, images, specs, tasks, splits = [], [], [], [], []
  for i in range(n):
    c = cells[i % len(cells)]
    j = taken[c]
    taken[c] += 1
    captions.append(sets[c][0][j])
    images.append(sets[c][1][j])
    specs.append(sets[c][2][j])
    tasks.append(c[0])
    splits.append(c[1])
  return captions, np.stack(images), specs, tasks, splits
