"""What every stage provides to the shared training loop."""

from __future__ import annotations

from typing import Any

import grain.python as grain
import jax
import numpy as np

from unclip_jax import diffusion
from unclip_jax.data import pipeline
from unclip_jax.errors import UserError

AXIS = "data"  # the device axis of the per-device train step
LOSS_HISTORY = "loss_history"  # key of the timestep sampler's state in `extra`
TIMESTEP_LOSSES = "timestep_losses"  # metrics key of per-example (t, loss), gathered into the history


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

  # ------------------------------------------------------------------------------- diffusion stages
  def build_diffusion_model(self) -> None:
    """`self.model` (this stage kind's module, built by the model registry from `config.model`) and
    `self.process` (the training diffusion process of `config.diffusion`); checks the timestep sampler."""
    from unclip_jax.models import registry

    self.model = registry.build_model(self.kind, self.config.model)
    self.process = diffusion.GaussianDiffusion.from_config(self.config.diffusion)
    sampler = self.config.diffusion.get("timestep_sampler", "uniform")
    if sampler not in diffusion.TIMESTEP_SAMPLERS:
      raise UserError(f"diffusion.timestep_sampler must be one of {', '.join(diffusion.TIMESTEP_SAMPLERS)}, "
                      f"got {sampler!r}")

  def importance_sampling(self) -> bool:
    """Whether training timesteps are drawn by their loss history (improved DDPM's loss-second-moment)."""
    return self.config.get("diffusion", {}).get("timestep_sampler", "uniform") == "loss_second_moment"

  def timestep_extra(self) -> dict:
    """The non-trained state of the timestep sampler: {LOSS_HISTORY: LossHistory} when importance
    sampling, else nothing. It lives in the train state's `extra`, so it is checkpointed and resumed."""
    if not self.importance_sampling():
      return {}
    history = int(self.config.diffusion.get("loss_history", 10))
    return {LOSS_HISTORY: diffusion.init_loss_history(self.process.num_timesteps, history)}

  def timesteps(self, key, n: int, extra) -> tuple[jax.Array, jax.Array]:
    """(t, loss weights) of n training examples, by the configured sampler."""
    return diffusion.sample_timesteps(key, n, self.process.num_timesteps, extra.get(LOSS_HISTORY))

  def timestep_metrics(self, loss, t, per_example: jax.Array, **metrics) -> dict:
    """A diffusion stage's metrics; with importance sampling also each example's (t, loss), which the loop
    gathers over the devices into the loss history (`record_timestep_losses`) instead of averaging."""
    metrics["loss"] = loss
    if self.importance_sampling():
      metrics[TIMESTEP_LOSSES] = (t, per_example)
    return metrics

  def init(self, rng):
    """(params, extra): the trained parameters and the non-trained variables (may read the data)."""
    return jax.jit(self.init_params)(rng), self.make_extra()

  def make_extra(self) -> dict:
    return self.timestep_extra()

  def from_export(self, tree, extra):
    """(params, extra) from the tree `export` writes (the inverse of its tree part)."""
    return tree, extra

  def abstract_extra(self) -> dict:
    """Shapes of `make_extra()` without touching data (for benchmarks and memory analysis)."""
    return jax.eval_shape(self.timestep_extra)

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


def record_timestep_losses(extra: dict, timestep_losses) -> dict:
  """`extra` with its loss history updated by every device's (t, per-example loss) of this step (all
  gathered, so every replica applies the same global-batch update). Per device, under pmap."""
  t, losses = (jax.lax.all_gather(x, AXIS, tiled=True) for x in timestep_losses)
  return dict(extra, **{LOSS_HISTORY: diffusion.update_loss_history(extra[LOSS_HISTORY], t,
                                                                     jax.lax.stop_gradient(losses))})
