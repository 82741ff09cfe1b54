"""`python -m unclip_jax.bench peers`, `mfu`, `scaling` and `train` at tiny size (wiring only; nothing is timed or
compared to a target here)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.peers import require
from unclip_jax.bench import mfu, peer_timing, peers, scaling
from unclip_jax.bench import train as bench_train
from unclip_jax.errors import UserError


def _check_rows(rows, names):
  assert [r["name"] for r in rows] == names
  for r in rows:
    assert r["ours_s"] > 0 and r["peer_s"] > 0 and r["rounds"] == len(r["ours_all_s"]) == len(r["peer_all_s"])
    assert r["ratio"] == pytest.approx(r["peer_s"] / r["ours_s"], rel=1e-2)
    assert r["peer_mode"].startswith("torch ") and " eager" in r["peer_mode"] and r["parameters"] > 0


@pytest.mark.slow
@pytest.mark.peers
def test_peers_cli_writes_the_table_and_json(tmp_path, capsys):
  require("diffusers")
  require("open_clip")
  out = tmp_path / "peers.json"
  rows = "clip,prior_train,prior_sampling,decoder_convs,decoder_sampling"
  assert peers.main(["--size", "tiny", "--rows", rows, "--rounds", "1", "--peer-mode", "eager",
                     "--json", str(out)]) == 0
  report = json.loads(out.read_text())
  assert report["size"] == "tiny" and report["devices"] == 8 and report["backend"] == "cpu"
  names = [peers.ROW_KEYS[k] for k in rows.split(",")]
  _check_rows(report["rows"], names)
  assert report["complete"] is True
  assert all(r["ours_peak_bytes"] is None and r["peer_peak_bytes"] is None for r in report["rows"])  # CPU: none
  table = capsys.readouterr().out
  assert all(n in table for n in names) and "ratio" in table


@pytest.mark.slow
@pytest.mark.peers
def test_isolate_runs_each_row_in_its_own_process(tmp_path, capsys):
  require("diffusers")
  require("open_clip")
  out = tmp_path / "peers.json"
  assert peers.main(["--size", "tiny", "--rows", "clip,prior_sampling", "--rounds", "1", "--peer-mode", "eager",
                     "--isolate", "--json", str(out)]) == 0
  report = json.loads(out.read_text())
  assert report["isolated"] is True and report["complete"] is True and report["backend"] == "cpu"
  _check_rows(report["rows"], ["clip forward", "prior sampling 25 steps"])
  printed = capsys.readouterr().out
  assert printed.count("bench peers --size tiny: jax") == 2  # each child's header, relayed


@pytest.mark.peers
def test_isolate_goes_on_past_a_failed_row(tmp_path, monkeypatch, capsys):
  require("diffusers")
  out = tmp_path / "peers.json"
  seen = []

  def run_child(cmd, name):
    seen.append(cmd[cmd.index("--rows") + 1])
    if name == "clip forward":
      raise UserError("the process of the 'clip forward' row exited with status 1")
    return {"backend": "cpu"}, {"name": name, "ours_s": 1.0, "peer_s": 2.0, "ratio": 2.0, "peer_mode": "torch"}
  monkeypatch.setattr(peers, "_run_child", run_child)
  assert peers.main(["--size", "tiny", "--rows", "clip,prior_sampling", "--rounds", "1", "--isolate",
                     "--json", str(out)]) == 1
  assert seen == ["clip", "prior_sampling"] and "failed: clip forward" in capsys.readouterr().out
  rows = json.loads(out.read_text())["rows"]
  assert "exited with status 1" in rows[0]["error"] and rows[1]["ratio"] == 2.0


@pytest.mark.peers
def test_peers_json_keeps_the_rows_finished_before_a_failure(tmp_path, monkeypatch):
  require("diffusers")
  out = tmp_path / "peers.json"

  def run_row(key, rounds, mode, log):
    if key == "prior_sampling":
      raise RuntimeError("out of memory")
    return {"name": peers.ROW_KEYS[key], "ours_s": 1.0, "peer_s": 2.0, "ratio": 2.0, "peer_mode": "torch",
            "ours_peak_bytes": None, "peer_peak_bytes": None}
  monkeypatch.setattr(peers, "build_row", lambda key, spec, gpu: key)
  monkeypatch.setattr(peers, "run_row", run_row)
  with pytest.raises(RuntimeError, match="out of memory"):
    peers.main(["--size", "tiny", "--rows", "clip,prior_sampling", "--rounds", "1", "--json", str(out)])
  report = json.loads(out.read_text())
  assert report["complete"] is False and [r["name"] for r in report["rows"]] == ["clip forward"]


@pytest.mark.peers
@pytest.mark.slow
def test_decoder_training_and_the_pipeline_rows_run(tmp_path):
  require("diffusers")
  require("open_clip")
  spec = peers.size_spec("tiny")
  results = [peers.run_row(peers.build_row(k, spec, gpu=False), 1, "eager", log=lambda m: None)
             for k in ("decoder_train", "pipeline")]
  _check_rows(results, [peers.ROW_KEYS["decoder_train"], peers.ROW_KEYS["pipeline"]])


@pytest.mark.peers
def test_the_converted_clip_gives_the_peer_s_embeddings():
  """The rows compare the same function: ours, on the peer's converted weights, matches open_clip."""
  require("open_clip")
  row = peers.build_row("clip", peers.size_spec("tiny"), gpu=False)
  peer = peers.tp.Peer("eager")
  peer.prepare(*row.modules)
  ours, theirs = row.ours(), row.make_peer(peer)()
  np.testing.assert_allclose(ours["image_embedding"], theirs[0].numpy(), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(ours["text_embedding"], theirs[1].numpy(), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(ours["text_states"], theirs[2].numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.peers
def test_the_convolution_row_computes_the_peer_s_gradients():
  """Ours and torch differentiate the same convolutions: equal weight and input gradients."""
  require("torch")
  spec = peers.size_spec("tiny")
  row = peers.build_row("decoder_convs", spec, gpu=False)
  peer = peers.tp.Peer("eager")
  peer.prepare(*row.modules)
  (g_params, g_xs), theirs = row.ours(), row.make_peer(peer)()  # ours: one copy per device
  levels = peers.conv_levels(spec)
  assert row.info["levels"] == [f"{s}x{s}x{c}" for s, c in levels] and len(g_params) == 2 * len(levels)
  for i, g in enumerate(g_params):
    np.testing.assert_allclose(g["kernel"][0], theirs[2 * i].numpy().transpose(2, 3, 1, 0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(g["bias"][0], theirs[2 * i + 1].numpy(), rtol=1e-4, atol=1e-6)
  for g, t in zip(g_xs, theirs[2 * len(g_params):]):
    g = np.asarray(g).reshape((-1,) + g.shape[2:])
    np.testing.assert_allclose(g, t.numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-7)


@pytest.mark.peers
def test_the_float16_peer_runs_the_inference_rows_in_float16():
  """`Peer(half=True)`: weights and floating inputs in float16 (masks and ids kept), the same embeddings as
  the float32 peer to float16's precision; rows with gradients refuse it."""
  require("open_clip")
  row = peers.build_row("clip", peers.size_spec("tiny"), gpu=False)
  outs = {}
  for half in (False, True):
    peer = peers.tp.Peer("eager", half=half)
    peer.prepare(*row.modules)
    assert all(p.dtype == (peer.torch.float16 if half else peer.torch.float32) for p in row.modules[0].parameters())
    outs[half] = [t.float().numpy() for t in row.make_peer(peer)()]
  assert peer.tensor(np.ones(2, np.float32)).dtype == peer.torch.float16 and peer.tensor(np.ones(2, bool)).dtype \
      == peer.torch.bool and peer.tensor(np.ones(2, np.int64)).dtype == peer.torch.int64
  assert "eager fp16" in peer.describe()
  for a, b in zip(outs[False], outs[True]):
    np.testing.assert_allclose(b, a, rtol=2e-2, atol=2e-2)
  with pytest.raises(UserError, match="--peer-mode fp16 is for rows without gradients"):
    peer_timing.choose_peer(peers.Row("decoder train step", None, None, [], {}, inference=False), "fp16", print)


def test_peers_bad_arguments():
  with pytest.raises(UserError, match="unknown --rows"):
    peers.main(["--rows", "decoder,nope"])
  with pytest.raises(UserError, match="--rounds must be at least 5"):
    peers.main(["--size", "cpu", "--rounds", "3"])
  with pytest.raises(UserError, match="invalid choice: 'huge'"):
    peers.main(["--size", "huge"])


def test_mfu_reports_flops_and_utilisation(tmp_path):
  out = tmp_path / "mfu.json"
  assert mfu.main(["--preset", "tiny", "--stages", "prior", "--steps", "1", "--batch", "8", "--json", str(out)]) == 0
  (row,) = json.loads(out.read_text())["results"]
  assert row["stage"] == "prior" and row["global_batch"] == 8 and row["parameters"] > 0
  assert row["flops_per_step"] > 0 and row["peak_flops"] > 0 and 0 < row["mfu"] < 1
  assert row["achieved_flops"] == pytest.approx(row["flops_per_step"] / row["step_s"], rel=1e-3)
  # counted on the traced program; on a CPU the compiled program's count agrees (on a GPU it misses cuDNN's)
  assert row["flops_per_step"] == pytest.approx(row["backend_flops_per_step"], rel=0.1)
  assert row["mfu_datasheet"] is None  # float32 on a CPU: no datasheet peak
  with pytest.raises(UserError, match="--stages must name some of"):
    mfu.main(["--stages", "vae"])


def test_mfu_matmul_probe_multiplies_in_the_stage_dtype():
  assert str(mfu.matmul_operand(1, 8, "bfloat16").dtype) == "bfloat16"
  assert str(mfu.matmul_operand(2, 8, "float32").dtype) == "float32"


def test_mfu_datasheet_peaks():
  assert mfu.datasheet_peak("NVIDIA H200", "bfloat16") == 989e12
  assert mfu.datasheet_peak("TPU v5 lite", "bfloat16") == 197e12  # not v5p's, listed after it
  assert mfu.datasheet_peak("TPU v5p", "bfloat16") == 459e12
  assert mfu.datasheet_peak("NVIDIA H200", "float32") is None and mfu.datasheet_peak("cpu", "bfloat16") is None


def test_scaling_runs_each_device_count_in_its_own_process(tmp_path):
  out = tmp_path / "scaling.json"
  assert scaling.main(["--config", "configs/prior.py:tiny", "--devices", "2", "--steps", "1", "--batch", "8",
                       "--json", str(out)]) == 0
  rows = json.loads(out.read_text())["results"]
  assert [r["devices"] for r in rows] == [2] and all(r["global_batch"] == 8 for r in rows)
  assert all(r["examples_per_s"] > 0 and r["backend"] == "cpu" for r in rows)
  assert all(r["compile_s"] > r["step_s"] for r in rows)  # the compile itself, not a compiled step
  env = scaling._worker_env(4)  # noqa: SLF001 - the child's flags: the parent's, device count replaced
  assert env["XLA_FLAGS"].count("--xla_force_host_platform_device_count") == 1
  assert env["XLA_FLAGS"].endswith("--xla_force_host_platform_device_count=4")


def test_train_reports_memory_and_the_median_step(tmp_path, capsys):
  out = tmp_path / "train.json"
  assert bench_train.main(["--config", "configs/prior.py:tiny", "--steps", "5", "--json", str(out)]) == 0
  r = json.loads(out.read_text())
  assert r["stage"] == "prior" and r["devices"] == 8 and r["per_device_batch"] == 1 and r["parameters"] > 0
  assert r["peak_estimate_bytes"] > 0 and r["timed_steps"] == 5
  assert 0 < r["step_s_p10"] <= r["step_s_median"] <= r["step_s_p90"]
  assert r["steps_per_s"] == pytest.approx(1 / r["step_s_median"], rel=1e-3)
  assert "median of 5 steps" in capsys.readouterr().out
  with pytest.raises(UserError, match="--steps non-negative"):
    bench_train.main(["--config", "configs/prior.py:tiny", "--steps", "-1"])
