"""The shared training loop on the tiny CLIP stage: exact resume, device-count invariance, guards,
checkpoints, and the CLI's handling of bad input."""

import os
import signal

import jax
import numpy as np
import pytest

from unclip_jax.errors import UserError, run_cli
from unclip_jax.train import __main__ as train_cli
from unclip_jax.train import loop
from unclip_jax.train.metrics import read_metrics

from tests.helpers import CLIP_CONFIG, assert_same_run, leaves, tiny_clip_config

CONFIG = CLIP_CONFIG
tiny_config = tiny_clip_config


@pytest.mark.slow
def test_resumed_run_equals_uninterrupted_run_bitwise(data_dir, tmp_path, capfd, caplog):
  straight = loop.train(tiny_config(data_dir), tmp_path / "straight", progress=False)
  first = loop.train(tiny_config(data_dir), tmp_path / "resumed", stop_after=3, progress=False)
  assert first.stopped_early and first.final_step == 3
  assert sorted(os.listdir(tmp_path / "resumed" / "checkpoints")) == ["2", "3"]
  capfd.readouterr()
  second = loop.train(tiny_config(data_dir), tmp_path / "resumed", progress=False)
  out = capfd.readouterr()
  assert "resumed" in out.out and "warning" not in out.out
  assert "could not be restored" not in caplog.text + out.err  # orbax knows every item's handler
  assert second.start_step == 3 and second.final_step == 6
  assert len(assert_same_run(tmp_path / "straight", straight.state, tmp_path / "resumed", second.state)) == 6
  assert (tmp_path / "straight" / "export" / "stage.json").is_file()


def test_one_device_and_eight_devices_give_the_same_loss_curve(data_dir, tmp_path):
  eight = loop.train(tiny_config(data_dir, **{"train.steps": 4}), tmp_path / "eight", progress=False)
  one = loop.train(tiny_config(data_dir, **{"train.steps": 4, "train.num_devices": 1}), tmp_path / "one",
                   progress=False)
  assert_same_run(tmp_path / "eight", eight.state.params, tmp_path / "one", one.state.params, loss_rtol=2e-4,
                  rtol=2e-3, atol=2e-5)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(data_dir, tmp_path, monkeypatch):
  real = loop.make_train_step

  def poisoned(*args, **kwargs):
    step = real(*args, **kwargs)
    calls = []

    def wrapped(state, batch):
      calls.append(1)
      new_state, metrics = step(state, batch)
      if len(calls) == 3:
        metrics = dict(metrics, loss=np.float32(np.nan))
      return new_state, metrics

    return wrapped

  monkeypatch.setattr(loop, "make_train_step", poisoned)
  with pytest.raises(loop.TrainingDiverged, match=r"non-finite loss \(nan\).*at step 3.*step 2\) is kept"):
    loop.train(tiny_config(data_dir), tmp_path / "run", progress=False)
  assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["2"]


def test_sigterm_saves_and_stops(data_dir, tmp_path, monkeypatch):
  real = loop.make_train_step

  def signalling(*args, **kwargs):
    step = real(*args, **kwargs)
    calls = []

    def wrapped(state, batch):
      calls.append(1)
      if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGTERM)  # the loop finishes this step, saves it and returns
      return step(state, batch)

    return wrapped

  monkeypatch.setattr(loop, "make_train_step", signalling)
  result = loop.train(tiny_config(data_dir), tmp_path / "run", progress=False)
  assert result.stopped_early and result.final_step == 3
  assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["2", "3"]
  assert not (tmp_path / "run" / "export").exists()


def test_max_seconds_saves_and_stops_like_a_preemption(data_dir, tmp_path, capfd):
  """A budget shorter than the first step (compiling included): that step is saved, nothing is exported,
  and the line says why; a negative budget is refused before any training."""
  result = loop.train(tiny_config(data_dir, **{"train.max_seconds": 0.001}), tmp_path / "run", progress=False)
  assert result.stopped_early and result.final_step == 1
  assert "train.max_seconds=0.001 reached: saving step 1 and exiting" in capfd.readouterr().out
  assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["1"]
  assert not (tmp_path / "run" / "export").exists()
  with pytest.raises(UserError, match="train.max_seconds must be 0 .no limit. or a positive number of seconds, got -5"):
    loop.train(tiny_config(data_dir, **{"train.max_seconds": -5}), tmp_path / "other", progress=False)


def test_one_step_in_flight_is_the_same_run_and_a_stop_finishes_the_queued_step(data_dir, tmp_path, monkeypatch):
  """GPU/TPU dispatch step k+1 before reading step k; forced on here (one device: CPU collectives must not
  overlap). SIGTERM arrives while step 3 runs, after step 4 was queued with step 3's state donated to it:
  step 4 finishes and is saved, and the resumed run equals the one that waited on every step."""
  one = {"train.num_devices": 1}
  waited = loop.train(tiny_config(data_dir, **one), tmp_path / "waited", progress=False)
  monkeypatch.setattr(loop, "one_step_in_flight", lambda: True)
  real, calls = loop.make_train_step, []

  def signalling(*args, **kwargs):
    step = real(*args, **kwargs)

    def wrapped(state, batch):
      calls.append(int(np.asarray(state.step)))
      if len(calls) == 4:  # step 4 is being dispatched while step 3 is not yet read
        os.kill(os.getpid(), signal.SIGTERM)
      return step(state, batch)

    return wrapped

  monkeypatch.setattr(loop, "make_train_step", signalling)
  first = loop.train(tiny_config(data_dir, **one), tmp_path / "ahead", progress=False)
  assert calls == [0, 1, 2, 3] and first.stopped_early and first.final_step == 4
  assert sorted(os.listdir(tmp_path / "ahead" / "checkpoints")) == ["2", "4"]
  second = loop.train(tiny_config(data_dir, **one), tmp_path / "ahead", progress=False)
  assert second.start_step == 4 and second.final_step == 6
  assert calls[4:] == [4, 5]
  assert len(assert_same_run(tmp_path / "waited", waited.state, tmp_path / "ahead", second.state)) == 6


def test_a_workdir_of_another_run_is_refused_untouched(data_dir, tmp_path):
  loop.train(tiny_config(data_dir, **{"train.steps": 2}), tmp_path / "run", progress=False)
  before = sorted(os.listdir(tmp_path / "run" / "checkpoints"))
  other = tiny_config(data_dir, **{"train.steps": 2, "optim.lr": 0.5})
  with pytest.raises(UserError, match=r"holds checkpoints of another run \(optim.lr: 0.003 in the checkpoint, 0.5 now"):
    loop.train(other, tmp_path / "run", progress=False)
  assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == before


@pytest.mark.parametrize("args,message", [
    (["--config", "configs/clip.py:huge", "--workdir", "W"], "unknown CLIP preset 'huge'"),
    (["--config", "configs/nope.py", "--workdir", "W"], "config file configs/nope.py does not exist"),
    (["--config", CONFIG, "--workdir", "W", "--config.train.stepz=3"],
     "unknown config key 'train.stepz': train has no field 'stepz'"),
    (["--config", CONFIG, "--workdir", "W", "--config.train.steps=many"], "bad value for config key 'train.steps'"),
    (["--config", CONFIG, "--workdir", "W", "--data_dir", "/nonexistent/data"], "data directory /nonexistent/data does not exist"),
    (["--config", CONFIG, "--workdir", "W"], "no data directory: pass --data_dir DIR"),
    (["--workdir", "W"], "the following arguments are required: --config"),
])
def test_cli_bad_input_is_one_line_and_exit_2(args, message, tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
  args = [a.replace("W", str(tmp_path / "w")) if a == "W" else a for a in args]
  with pytest.raises(SystemExit) as e:
    run_cli(train_cli.main, args)
  err = capsys.readouterr().err
  assert e.value.code == 2, err
  assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
  assert not (tmp_path / "w" / "checkpoints").exists() or not os.listdir(tmp_path / "w" / "checkpoints")


def test_gradient_accumulation_updates_every_k_micro_batches(data_dir, tmp_path):
  result = loop.train(tiny_config(data_dir, **{"train.steps": 4, "optim.accum_steps": 2, "optim.warmup_steps": 2}),
                      tmp_path / "accum", progress=False)
  lrs = [r["lr"] for r in read_metrics(tmp_path / "accum")]
  assert lrs[0] == lrs[1] == 0.0 and lrs[2] == lrs[3] > 0  # the schedule advances once per 2 micro-batches
  assert result.final_step == 4


def test_a_field_added_later_with_its_old_behaviour_is_the_same_run():
  """A checkpoint saved before `model.image_tower` existed resumes under a config with image_tower=True,
  and not under one that changes the model (image_tower=False)."""
  import ml_collections

  from unclip_jax.train.checkpoints import config_differences

  saved = {"stage": "clip", "model": {"width": 8}}
  same = ml_collections.ConfigDict({"stage": "clip", "model": {"width": 8, "image_tower": True}})
  other = ml_collections.ConfigDict({"stage": "clip", "model": {"width": 8, "image_tower": False}})
  assert config_differences(saved, same) == []
  assert config_differences(saved, other) == ["model.image_tower: True in the checkpoint, False now"]


def test_resuming_with_another_step_count_warns_that_the_schedule_moves(data_dir, tmp_path, capsys):
  loop.train(tiny_config(data_dir, **{"train.steps": 6}), tmp_path / "run", stop_after=2, progress=False)
  capsys.readouterr()
  resumed = loop.train(tiny_config(data_dir, **{"train.steps": 4}), tmp_path / "run", progress=False)
  assert resumed.start_step == 2 and resumed.final_step == 4
  out = capsys.readouterr().out
  assert "started with train.steps=6 and resumes with 4" in out and "--config.train.steps=6" in out, out


@pytest.mark.slow
def test_init_from_starts_a_new_run_from_an_exported_stage(data_dir, tmp_path, capsys):
  """`train.init_from` loads a stage checkpoint's EMA weights in place of the random init (fine-tuning): at a
  zero learning rate (the first warmup step) the new run exports exactly those weights. A resumed run keeps
  its own checkpoint even when the folder it started from is gone."""
  from unclip_jax import checkpoint

  ema = {"optim.ema_decay": 0.9}  # the tiny CLIP keeps none; with one, its export holds online and EMA weights
  source = loop.train(tiny_config(data_dir, **{**ema, "train.steps": 2}), tmp_path / "source", progress=False)
  wanted = loop.sampling_params(source.state)
  assert not all(np.allclose(a, b) for a, b in zip(leaves(wanted), leaves(source.state.params)))
  still = {**ema, "train.steps": 1, "optim.warmup_steps": 10, "seed": 7,
           "train.init_from": str(tmp_path / "source" / "export")}
  capsys.readouterr()
  loop.train(tiny_config(data_dir, **still), tmp_path / "tuned", progress=False)
  assert "started from the weights of" in capsys.readouterr().out
  abstract = jax.eval_shape(lambda: wanted)
  got = checkpoint.load_stage_params(tmp_path / "tuned" / "export", {"params": abstract, "ema": abstract})
  for a, b, c in zip(leaves(wanted), leaves(got["params"]), leaves(got["ema"])):  # the EMA, not the online copy
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(a, c, rtol=1e-6, atol=1e-7)
  fresh = loop.train(tiny_config(data_dir, **{**still, "train.init_from": ""}), tmp_path / "fresh", progress=False)
  assert not all(np.allclose(a, b) for a, b in zip(leaves(wanted), leaves(loop.sampling_params(fresh.state))))

  import shutil
  shutil.rmtree(tmp_path / "source")
  resumed = loop.train(tiny_config(data_dir, **{**still, "train.steps": 2}), tmp_path / "tuned", progress=False)
  assert resumed.start_step == 1 and resumed.final_step == 2


@pytest.mark.parametrize("change,message", [
    ({"model.embed_dim": 48}, "does not match this run's config"),
    ({}, "is not a unclip_jax stage checkpoint"),
])
def test_init_from_a_checkpoint_that_does_not_fit_is_one_error(data_dir, tmp_path, change, message):
  loop.train(tiny_config(data_dir, **{"train.steps": 1}), tmp_path / "source", progress=False)
  target = tmp_path / "source" / ("export" if change else "checkpoints")
  config = tiny_config(data_dir, **{"train.steps": 1, "train.init_from": str(target), **change})
  with pytest.raises(UserError, match=f"--config.train.init_from={target}: .*{message}"):
    loop.train(config, tmp_path / "tuned", progress=False)
  assert not (tmp_path / "tuned" / "export").exists()
