"""What every stage provides to the shared training loop."""

from __future__ import annotations

from typing import Any

import grain.python as grain
import jax
import numpy as np

from unclip_jax.data import pipeline
from unclip_jax.errors import UserError

AXIS = "data"  # the device axis of the per-device train step


class Stage:
  """Base class: data access from `config.data`; subclasses define the model and the loss.

  Subclasses implement `init_params(rng)` (pure: `jax.eval_shape` gives the shapes), `batch_spec(n)`
  (the device arrays of n examples), `loss(params, extra, batch, rng) -> (loss, metrics)` (per device,
  may use collectives over `AXIS`) and `export(params, extra) -> (kind, tree, config)`; stages with
  non-trained state override `make_extra()` / `abstract_extra()`; they may override `operations()`
  (per-example grain transforms), `postprocess(params)` and `samples(...)`.
  """

  kind = ""

  def __init__(self, config):
    self.config = config

  def build_diffusion_model(self) -> None:
    """`self.model` (this stage kind's module, built by the model registry from `config.model`) and
    `self.process` (the training diffusion process of `config.diffusion`)."""
    from unclip_jax import diffusion
    from unclip_jax.models import registry

    self.model = registry.build_model(self.kind, self.config.model)
    self.process = diffusion.GaussianDiffusion.from_config(self.config.diffusion)

  def init(self, rng):
    """(params, extra): the trained parameters and the non-trained variables (may read the data)."""
    return jax.jit(self.init_params)(rng), self.make_extra()

  def make_extra(self) -> dict:
    return {}

  def abstract_extra(self) -> dict:
    """Shapes of `make_extra()` without touching data (for benchmarks and memory analysis)."""
    return {}

  # ---------------------------------------------------------------------------------------------- data
  def source(self, split: str | None = None):
    data = self.config.data
    if not data.get("data_dir"):
      raise UserError("no data directory: pass --data_dir DIR (or --config.data.data_dir=DIR); prepare data "
                      f"with `python -m unclip_jax.data.prepare {data.name} --data_dir DIR`")
    return pipeline.open_source(data.data_dir, data.name, split or data.get("split", "train"),
                                data.get("config") or None)

  def operations(self) -> list[grain.MapTransform]:
    return [pipeline.ImageCaption()]

  def check_example(self, example: dict[str, Any]) -> None:
    """Raises `UserError` if a prepared example does not fit the model (e.g. image size)."""

  # ---------------------------------------------------------------------------------------------- model
  def postprocess(self, params):
    return params

  def samples(self, params, extra, batch, rng):
    """uint8 images [N, H, W, 3] to show progress, or None for stages that do not draw images."""
    return None


def device_arrays(batch: dict[str, Any]) -> dict[str, np.ndarray]:
  """The numeric arrays of a host batch (strings such as captions stay on the host)."""
  return {k: v for k, v in batch.items() if isinstance(v, np.ndarray) and v.dtype.kind in "biuf"}


def split_rngs(rng: jax.Array, names: tuple[str, ...]) -> dict[str, jax.Array]:
  return dict(zip(names, jax.random.split(rng, len(names))))
