"""Each stage's `tiny` preset trains end to end on 8 CPU devices: shapes → (CLIP →) embed → prior/decoder,
and shapes → upsampler; every run exports a stage checkpoint that loads back."""

import json

import jax
import numpy as np
import pytest
from PIL import Image

from unclip_jax import checkpoint
from unclip_jax.data import embedded, prepare
from unclip_jax.models import clip as clip_model
from unclip_jax.train import config_loader, loop
from unclip_jax.train.metrics import read_metrics


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp("stages")
  shapes = prepare.prepare_shapes(str(root / "data"), image_size=32, train_size=32, heldout_size=8)
  clip_cfg = clip_model.get_preset("tiny")
  checkpoint.save_stage(root / "clip", clip_model.init_params(clip_cfg, jax.random.key(0)), kind="clip",
                        config=clip_cfg.to_dict())
  embedded.embed(checkpoint=str(root / "clip"), data_dir=str(root / "data"), dataset="shapes",
                 dataset_config=shapes.builder_config.name, name="shapes32", batch_size=16)
  return root, shapes.builder_config.name


def run(spec, root, workdir, **overrides):
  config = config_loader.load_config_file(spec)
  settings = {"data.data_dir": str(root / "data"), "train.steps": 2, "train.batch_size": 16, "train.log_every": 1,
              **overrides}
  config_loader.apply_overrides(config, [f"{k}={v}" for k, v in settings.items()])
  result = loop.train(config, workdir, progress=False)
  rows = read_metrics(workdir)
  assert result.final_step == 2 and len(rows) == 2 and all(np.isfinite(r["loss"]) for r in rows)
  meta = checkpoint.read_stage(workdir / "export")
  assert meta["step"] == 2
  return meta


def test_prior_stage(data, tmp_path):
  root, _ = data
  meta = run("configs/prior.py:tiny", root, tmp_path / "prior")
  assert meta["kind"] == "prior" and meta["ema"] is True
  stats_mean, _ = embedded.clip_stats(embedded.load_metadata(root / "data", "shapes32"), "train")
  params_dir = tmp_path / "prior" / "export"
  from unclip_jax.models import prior as prior_model

  abstract = jax.eval_shape(lambda: prior_model.init_variables(prior_model.from_config(meta["config"]["model"]),
                                                               jax.random.key(0)))
  restored = checkpoint.load_stage_params(params_dir, {"params": abstract, "ema": abstract}, kind="prior")
  np.testing.assert_allclose(restored["ema"]["stats"]["clip_mean"], stats_mean, rtol=1e-6)  # data statistics travel
  ema, online = restored["ema"]["params"]["proj_in"]["kernel"], restored["params"]["params"]["proj_in"]["kernel"]
  assert not np.array_equal(ema, online)  # both copies are exported, and they differ

  # Fine-tuning from it keeps the checkpoint's statistics (the model learned in their coordinates), not this
  # run's: a checkpoint saved with other statistics passes them on to the new run's export.
  shifted = jax.tree.map(np.asarray, restored["ema"])
  shifted["stats"]["clip_mean"] = shifted["stats"]["clip_mean"] + 1.0
  checkpoint.save_stage(tmp_path / "shifted", shifted, kind="prior", config=meta["config"])
  run("configs/prior.py:tiny", root, tmp_path / "tuned", **{"train.init_from": str(tmp_path / "shifted")})
  tuned = checkpoint.load_stage_params(tmp_path / "tuned" / "export", {"params": abstract, "ema": abstract}, kind="prior")
  np.testing.assert_allclose(tuned["ema"]["stats"]["clip_mean"], stats_mean + 1.0, rtol=1e-6)


@pytest.mark.slow
def test_decoder_stage_with_sample_grid(data, tmp_path, monkeypatch):
  from unclip_jax.train.metrics import MetricsWriter

  logged_images = []
  monkeypatch.setattr(MetricsWriter, "image", lambda self, tag, image, step: logged_images.append(
      (tag, np.asarray(image).shape, step)))
  root, _ = data
  meta = run("configs/decoder.py:tiny", root, tmp_path / "decoder",
             **{"train.sample_every": 2, "diffusion.sample.steps": "4"})
  assert meta["kind"] == "decoder"
  grid = np.asarray(Image.open(tmp_path / "decoder" / "samples" / "step_00000002.png"))
  assert grid.ndim == 3 and grid.shape[0] > 16 and grid.shape[1] > 16  # 8 data images above 8 samples
  assert set(json.loads((tmp_path / "decoder" / "metrics.jsonl").read_text().splitlines()[0])) >= {"loss", "vb", "mse"}
  assert logged_images == [("samples", grid.shape, 2)]  # the same grid, to TensorBoard


@pytest.mark.slow
def test_upsampler_stage(data, tmp_path):
  root, _ = data
  shapes64 = prepare.prepare_shapes(str(root / "data"), image_size=64, train_size=16, heldout_size=4)
  meta = run("configs/upsampler.py:tiny", root, tmp_path / "sr", **{"data.config": shapes64.builder_config.name})
  assert meta["kind"] == "upsampler" and meta["config"]["degrade"]["kind"] == "blur"


def test_prior_stage_refuses_a_non_embedded_dataset(data, tmp_path):
  root, name = data
  from unclip_jax.errors import UserError

  with pytest.raises(UserError, match="trains on an embedded dataset"):
    run("configs/prior.py:tiny", root, tmp_path / "bad", **{"data.name": "shapes", "data.config": name})


def test_prior_stage_with_importance_sampling_resumes_exactly(data, tmp_path):
  """loss_second_moment: the loss history counts every example of the global batch, lives in the train
  state, and a run stopped at step 2 and resumed ends equal to the uninterrupted one, history included."""
  from tests.helpers import assert_same_run
  from unclip_jax.train.stages.base import LOSS_HISTORY

  root, _ = data

  def config():
    c = config_loader.load_config_file("configs/prior.py:tiny")
    settings = {"data.data_dir": str(root / "data"), "train.steps": 4, "train.batch_size": 16, "train.log_every": 1,
                "train.checkpoint_every": 2, "diffusion.timestep_sampler": "loss_second_moment"}
    return config_loader.apply_overrides(c, [f"{k}={v}" for k, v in settings.items()])
  straight = loop.train(config(), tmp_path / "straight", progress=False)
  assert int(np.asarray(straight.state.extra[LOSS_HISTORY].counts).sum()) == 4 * 16
  assert loop.train(config(), tmp_path / "resumed", stop_after=2, progress=False).final_step == 2
  resumed = loop.train(config(), tmp_path / "resumed", progress=False)
  assert resumed.start_step == 2
  assert_same_run(tmp_path / "straight", straight.state, tmp_path / "resumed", resumed.state)
