"""The evaluator network whose features FD, KID, precision/recall and memorisation are measured in.

Why our own network: Inception-v3 features (FID) describe photographs, are far from these flat-colour
scenes and would need downloaded weights; a small CNN trained to read the scenes' attributes (for each of
the 21 colour-shape objects, how many of it there are) spends its features on what the captions
talk about. It is trained on procedurally drawn scenes of both splits and all caption kinds (its own
seed, never the generator's), with pixel noise and blur so blurry samples are not out of its
distribution, and states its accuracy on fresh scenes. It is saved as a small checkpoint (flax msgpack +
meta.json) in a cache folder keyed by its config, and reused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

from unclip_jax.data import shapes
from unclip_jax.errors import UserError

OBJECTS = tuple((c, s) for c in shapes.COLORS for s in shapes.SHAPES)  # 21 (colour, shape) heads
FORMAT = 3  # bump when the network or its training changes: cached networks are keyed by it


@dataclasses.dataclass(frozen=True)
class FeatureNetConfig:
  image_size: int = 64
  widths: tuple[int, ...] = (16, 32, 64, 64)  # after a 2x2 average pool: at 32, 16, 8 and 8 px
  feature_dim: int = 128
  steps: int = 1500
  batch_size: int = 64
  lr: float = 2e-3
  pool: int = 6000  # scenes drawn once for training
  test_size: int = 1000  # fresh scenes its stated accuracy is measured on
  seed: int = 0  # data seed offset; the scenes use seed 0xFEA7 + seed, never the dataset's 0

  def key(self) -> str:
    """The cache folder's name: the config and the recipe's FORMAT (bumped whenever training changes)."""
    fields = {**dataclasses.asdict(self), "format": FORMAT}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def palette_affinity(x):
  """Per pixel, exp(-d² / 2·30²) to each of the 8 palette colours (x in [-1, 1]): extra input channels
  that make colours easy, so the network spends its training on shapes and counts. Off-palette pixels
  have low affinity to every colour, so the network still sees them."""
  import jax.numpy as jnp

  palette = jnp.asarray([shapes.BACKGROUND] + list(shapes.COLORS.values()), jnp.float32) / 127.5 - 1.0
  d2 = jnp.sum((x[..., None, :] - palette) ** 2, axis=-1)
  return jnp.exp(-d2 / (2 * (30 / 127.5) ** 2))


def _module(config: FeatureNetConfig):
  import flax.linen as nn
  import jax.numpy as jnp

  class ShapesNet(nn.Module):
    """A tiny centre-point detector: palette affinities next to RGB, a 2x2 average pool (the smallest
    objects are 12 px), 3x3 convolutions (two of them strided) to an 8 x 8 grid of 8 px cells, a 1x1
    layer to `feature_dim` features per cell, and per cell a 22-way class: no object centre, or the
    centre of one of the 21 (colour, shape) objects (centres are at least 14 px apart, so a cell holds
    at most one). Counts are the cells' classes counted. The features are the cells' features averaged
    (like Inception's pool3 for FID)."""

    @nn.compact
    def __call__(self, x):
      w = config.widths
      x = jnp.concatenate([x, palette_affinity(x)], axis=-1)
      x = nn.avg_pool(x, (2, 2), strides=(2, 2))
      x = nn.gelu(nn.Conv(w[0], (3, 3))(x))
      x = nn.gelu(nn.Conv(w[1], (3, 3), strides=(2, 2))(x))
      x = nn.gelu(nn.Conv(w[2], (3, 3), strides=(2, 2))(x))
      x = nn.gelu(nn.Conv(w[3], (3, 3))(x))
      cells = nn.gelu(nn.Dense(config.feature_dim, name="cells")(x))
      logits = nn.Dense(len(OBJECTS) + 1, name="centres")(cells)
      return cells.mean((1, 2)), logits
  return ShapesNet()


GRID = 8  # cells per side of the output grid (for 64 px inputs)


def centre_targets(specs: list[dict], size: int) -> np.ndarray:
  """int (N, GRID, GRID): 0, or 1 + the index in OBJECTS of the object whose box centre is in the cell."""
  out = np.zeros((len(specs), GRID, GRID), np.int32)
  cell = size / GRID
  for i, spec in enumerate(specs):
    for o in spec["objects"]:
      x0, y0, x1, y1 = o["bbox"]
      out[i, int((y0 + y1) / 2 / cell), int((x0 + x1) / 2 / cell)] = 1 + OBJECTS.index((o["color"], o["shape"]))
  return out


def counts_from_cells(cells: np.ndarray) -> np.ndarray:
  """int (N, 21): how many cells of each object class (the object counts)."""
  flat = np.asarray(cells).reshape(len(cells), -1)
  return np.stack([(flat == k + 1).sum(1) for k in range(len(OBJECTS))], 1).astype(np.int32)


def scenes(n: int, size: int, seed: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """n scenes, 80% from the train split and 20% from the held-out one, all caption kinds."""
  n_held = n // 5
  parts = [shapes.ShapesScenes(size, "train", seed, shapes.ALL_KINDS).batch(start, n - n_held),
           shapes.ShapesScenes(size, "heldout", seed, shapes.ALL_KINDS).batch(start, n_held)]
  images = np.concatenate([p[0] for p in parts])
  return images, centre_targets([s for p in parts for s in p[2]], size)


def _to_input(images):
  import jax.numpy as jnp
  return jnp.asarray(images, jnp.float32) / 127.5 - 1.0


class FeatureNet:
  """A trained evaluator network: `features(images)` (N, feature_dim) and `predict_counts(images)`."""

  def __init__(self, config: FeatureNetConfig, params, meta: dict):
    import jax

    self.config, self.params, self.meta = config, params, meta
    module = _module(config)
    self._apply = jax.jit(lambda p, x: module.apply({"params": p}, _to_input(x)))

  def _run(self, images: np.ndarray, batch: int = 256):
    from unclip_jax.eval.images import resize

    images = resize(images, self.config.image_size)
    feats, counts = [], []
    for lo in range(0, len(images), batch):
      chunk = images[lo:lo + batch]
      pad = batch - len(chunk) if len(images) > batch else 0  # one compiled shape for long inputs
      f, l = self._apply(self.params, np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)]) if pad else chunk)
      feats.append(np.asarray(f)[:len(chunk)])
      counts.append(np.asarray(l)[:len(chunk)])
    return np.concatenate(feats), np.concatenate(counts)

  def features(self, images: np.ndarray) -> np.ndarray:
    """float64 (N, feature_dim), divided by the network's fixed `feature_scale` (the RMS of its features
    on real scenes, measured once after training), so values are O(1) as KID's cubic kernel expects."""
    return self._run(images)[0].astype(np.float64) / float(self.meta.get("feature_scale", 1.0))

  def predict_counts(self, images: np.ndarray) -> np.ndarray:
    """int (N, 21): the predicted number of each (colour, shape) object."""
    return counts_from_cells(self._run(images)[1].argmax(-1))

  def accuracy(self, images: np.ndarray, cell_targets: np.ndarray) -> dict:
    """Per-object count accuracy (21 per image), whole-scene exact accuracy (every count right), and
    colour / shape presence accuracy (10 per image)."""
    pred, targets = self.predict_counts(images), counts_from_cells(cell_targets)
    present = lambda c: np.stack([c[:, [i for i, o in enumerate(OBJECTS) if o[k] == v]].sum(1) > 0  # noqa: E731
                                  for k, vs in ((0, shapes.COLORS), (1, shapes.SHAPES)) for v in vs], 1)
    return {"count_head": float(np.mean(pred == targets)), "scene_exact": float(np.mean((pred == targets).all(1))),
            "presence": float(np.mean(present(pred) == present(targets))), "n": int(len(images))}


def train(config: FeatureNetConfig, log: Callable[[str], None] = print, progress: bool = True) -> FeatureNet:
  """Trains the network on fresh scenes (AdamW, cosine schedule, noise and blur augmentation)."""
  import jax
  import jax.numpy as jnp
  import optax
  from tqdm.auto import tqdm

  start = time.perf_counter()
  data_seed = 0xFEA7 + config.seed
  images, targets = scenes(config.pool, config.image_size, data_seed)
  module = _module(config)
  dummy = jnp.zeros((1, config.image_size, config.image_size, 3))
  params = module.init(jax.random.PRNGKey(config.seed), dummy)["params"]
  tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, config.lr, min(100, config.steps // 10 + 1), config.steps,
                                                      config.lr / 20), weight_decay=1e-4)
  opt_state = tx.init(params)

  def augment(key, x):  # a 3x3 box blur on 30% of the images, pixel noise of random strength on all
    import flax.linen as nn

    k1, k2, k3 = jax.random.split(key, 3)
    b = x.shape[0]
    blurred = nn.avg_pool(x, (3, 3), strides=(1, 1), padding="SAME")
    x = jnp.where(jax.random.uniform(k1, (b, 1, 1, 1)) < 0.3, blurred, x)
    sigma = jax.random.uniform(k2, (b, 1, 1, 1), maxval=0.1)
    return x + sigma * jax.random.normal(k3, x.shape)

  @jax.jit
  def step(params, opt_state, key, x, y):
    def loss_fn(p):
      _, logits = module.apply({"params": p}, augment(key, _to_input(x)))
      weights = jnp.where(y > 0, 4.0, 1.0)  # object centres are rare among the 64 cells
      return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y) * weights)
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(config.seed)
  key = jax.random.PRNGKey(config.seed + 1)
  losses = []
  bar = tqdm(range(config.steps), desc="evaluator CNN", unit="step", leave=False, disable=not progress)
  for i in bar:
    idx = rng.choice(len(images), config.batch_size, replace=False)
    params, opt_state, loss = step(params, opt_state, jax.random.fold_in(key, i), images[idx], targets[idx])
    if i % 50 == 0 or i == config.steps - 1:
      losses.append(float(loss))
      bar.set_postfix(loss=f"{losses[-1]:.3f}")
  train_s = time.perf_counter() - start
  net = FeatureNet(config, jax.device_get(params), {})
  test_images, test_targets = scenes(config.test_size, config.image_size, data_seed + 1)  # fresh scenes, another seed
  scale = float(np.sqrt(np.mean(net.features(test_images) ** 2)))
  net.meta = {"format": FORMAT, "config": dataclasses.asdict(config), "feature_scale": scale,
              "train_seconds": round(train_s, 1), "loss_first": losses[0], "loss_last": losses[-1],
              "heldout_accuracy": net.accuracy(test_images, test_targets),
              "what": "counts of each of the 21 (colour, shape) objects (object centres per 8 px cell, counted); "
                      "features = the cells' features averaged, divided by feature_scale"}
  log(f"evaluator CNN: {config.steps} steps in {train_s:.0f}s, held-out accuracy "
      f"{net.meta['heldout_accuracy']}")
  return net


def save(net: FeatureNet, folder: str | Path) -> Path:
  """Writes params.msgpack and meta.json (atomically, file by file)."""
  from flax import serialization

  from unclip_jax.io import write_bytes_atomic, write_text_atomic

  folder = Path(folder)
  write_bytes_atomic(folder / "params.msgpack", serialization.msgpack_serialize(
      __import__("jax").tree.map(np.asarray, net.params)))
  write_text_atomic(folder / "meta.json", json.dumps(net.meta, indent=2, sort_keys=True))
  return folder


def load(folder: str | Path) -> FeatureNet:
  from flax import serialization

  folder = Path(folder)
  try:
    meta = json.loads((folder / "meta.json").read_text())
    config = FeatureNetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["config"].items()})
    params = serialization.msgpack_restore((folder / "params.msgpack").read_bytes())
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise UserError(f"{folder} is not an evaluator network checkpoint ({e}); remove it to retrain") from None
  return FeatureNet(config, params, meta)


def load_or_train(cache_dir: str | Path, config: FeatureNetConfig = FeatureNetConfig(),
                  log: Callable[[str], None] = print, progress: bool = True) -> FeatureNet:
  """The cached network of this config under `cache_dir`, trained and saved first if absent."""
  folder = Path(cache_dir) / f"feature_net_{config.key()}"
  if (folder / "meta.json").is_file():
    net = load(folder)
    log(f"evaluator CNN: {folder} (held-out accuracy {net.meta.get('heldout_accuracy')})")
    return net
  net = train(config, log, progress)
  save(net, folder)
  return net
