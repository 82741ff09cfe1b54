"""Stage checkpoints, atomic writes and the CLI error convention."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unclip_jax import checkpoint, io
from unclip_jax.errors import UserError, check_writable, positive_ints, run_cli


def test_stage_checkpoint_round_trip_and_shape_errors(tmp_path):
  params = {"dense": {"kernel": np.arange(12, dtype=np.float32).reshape(3, 4)}, "scale": np.ones(5, np.float32)}
  out = checkpoint.save_stage(tmp_path / "ck", params, kind="prior", config={"width": 4, "sizes": (1, 2)})
  assert sorted(os.listdir(out)) == ["params", "stage.json"]
  assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []  # no staging leftovers
  meta = checkpoint.read_stage(out, kind="prior")
  assert meta["config"] == {"width": 4, "sizes": [1, 2]} and meta["format"] == checkpoint.FORMAT_VERSION
  restored = checkpoint.load_stage_params(out, jax.eval_shape(lambda: params))
  np.testing.assert_array_equal(restored["dense"]["kernel"], params["dense"]["kernel"])

  wrong = jax.eval_shape(lambda: {"dense": {"kernel": jnp.zeros((3, 5))}, "scale": jnp.zeros(5)})
  with pytest.raises(UserError, match=r"\['dense'\]\['kernel'\] has shape \(3, 4\), the config needs \(3, 5\)"):
    checkpoint.load_stage_params(out, wrong)
  with pytest.raises(UserError, match=r"missing \['extra'\]"):
    checkpoint.load_stage_params(out, jax.eval_shape(lambda: {**params, "extra": jnp.zeros(1)}))
  with pytest.raises(UserError, match="holds a prior checkpoint, but a decoder checkpoint is needed"):
    checkpoint.read_stage(out, kind="decoder")
  with pytest.raises(UserError, match="already exists"):
    checkpoint.save_stage(out, params, kind="prior", config={})
  checkpoint.save_stage(out, {"scale": np.zeros(2, np.float32)}, kind="prior", config={"v": 2}, overwrite=True)
  assert checkpoint.read_stage(out)["config"] == {"v": 2}


def test_host_arrays_get_the_checksums_the_device_program_gives():
  """Stage loading sums host arrays in numpy; the sums must equal the compiled program's (what training and
  exports computed on devices), for every dtype a checkpoint holds, past the weights' 65521 wrap and with
  sums that overflow 32 bits."""
  import ml_dtypes

  rng = np.random.default_rng(0)
  tree = {"f32": rng.normal(size=(300, 251)).astype(np.float32) * 1e6,
          "f16": rng.normal(size=70_001).astype(np.float16),
          "bf16": rng.normal(size=(7, 9)).astype(ml_dtypes.bfloat16), "i32": rng.integers(-9, 9, 40).astype(np.int32),
          "u8": rng.integers(0, 255, 33).astype(np.uint8), "b": rng.random(10) > 0.5, "scalar": np.float32(3.5),
          "f64": rng.normal(size=5), "i64": np.arange(4, dtype=np.int64)}
  on_host = checkpoint.tree_checksums(tree)
  on_device = checkpoint.tree_checksums(jax.tree.map(jnp.asarray, tree))
  assert on_host == on_device and len(set(on_host.values())) == len(tree)
  damaged = dict(tree, f16=tree["f16"].copy())
  damaged["f16"][70_000] = 0
  assert checkpoint.tree_checksums(damaged)["['f16']"] != on_host["['f16']"]


def test_read_stage_rejects_missing_and_foreign_folders(tmp_path):
  with pytest.raises(UserError, match="does not exist"):
    checkpoint.read_stage(tmp_path / "nope")
  (tmp_path / "plain").mkdir()
  with pytest.raises(UserError, match="is not a unclip_jax stage checkpoint"):
    checkpoint.read_stage(tmp_path / "plain")
  bad = tmp_path / "bad"
  (bad / "params").mkdir(parents=True)
  (bad / "stage.json").write_text("{not json")
  with pytest.raises(UserError, match="is not valid JSON"):
    checkpoint.read_stage(bad)


def test_atomic_write_leaves_no_partial_file(tmp_path):
  target = tmp_path / "sub" / "result.json"
  io.write_text_atomic(target, json.dumps({"a": 1}))
  assert json.loads(target.read_text()) == {"a": 1}
  mask = os.umask(0)
  os.umask(mask)
  assert target.stat().st_mode & 0o777 == 0o666 & ~mask  # as `open` makes it, not mkstemp's private 0600

  with pytest.raises(TypeError):
    io.write_bytes_atomic(target, "not bytes")  # fails mid-write
  assert json.loads(target.read_text()) == {"a": 1}  # the old file is intact
  assert sorted(os.listdir(target.parent)) == ["result.json"]


def test_run_cli_turns_user_errors_into_one_line_and_exit_2(capsys):
  def main(argv):
    raise UserError("the thing\nis wrong; fix it")

  with pytest.raises(SystemExit) as e:
    run_cli(main, [])
  assert e.value.code == 2
  assert capsys.readouterr().err == "error: the thing is wrong; fix it\n"
  with pytest.raises(SystemExit) as e:
    run_cli(lambda argv: 0, [])
  assert e.value.code == 0


def test_run_cli_turns_os_errors_into_one_line_and_exit_1(capsys):
  def main(argv):
    raise PermissionError(13, "Permission denied", "/data/out.png")

  with pytest.raises(SystemExit) as e:
    run_cli(main, [])
  assert e.value.code == 1
  assert capsys.readouterr().err == "error: Permission denied: /data/out.png\n"


def test_check_writable_refuses_a_file_in_the_way_and_leaves_nothing_behind(tmp_path):
  target = tmp_path / "new" / "deeper" / "out.json"
  assert check_writable(target, "--json") == target  # creatable: nothing is created by the check
  assert sorted(os.listdir(tmp_path)) == []
  (tmp_path / "taken").write_text("x")
  assert check_writable(tmp_path / "taken", "--out") == tmp_path / "taken"  # an existing file may be replaced
  with pytest.raises(UserError, match=r"--out .*taken exists and is not a folder"):
    check_writable(tmp_path / "taken", "--out", folder=True)  # ... but not where a folder is wanted
  with pytest.raises(UserError, match=r"--out .*taken/sub: .*taken is a file, not a folder"):
    check_writable(tmp_path / "taken" / "sub", "--out")
  assert sorted(os.listdir(tmp_path)) == ["taken"]


@pytest.mark.parametrize("args", [
    ["sample", "--prompt", "a red circle", "--out", "{blocked}/run"],
    ["train", "--config", "configs/clip.py:tiny", "--workdir", "{blocked}/run"],
    ["bench", "sampler", "--json", "{blocked}/bench.json"],
    ["pipeline", "init-random", "--out", "{blocked}/pipe"],
])
def test_clis_refuse_an_unwritable_output_location_at_once(tmp_path, args):
  blocked = tmp_path / "a_file"
  blocked.write_text("in the way")
  args = [a.format(blocked=blocked) for a in args]
  proc = subprocess.run([sys.executable, "-m", f"unclip_jax.{args[0]}", *args[1:]], capture_output=True, text=True,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"}, cwd=Path(__file__).resolve().parents[2])
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.strip().splitlines()[-1].endswith("a_file is a file, not a folder; choose another location")
  assert "Traceback" not in proc.stderr and "loaded" not in proc.stderr  # refused before the pipeline loads


@pytest.mark.parametrize("args,message", [
    (["bench", "nosuch"], "error: unknown benchmark 'nosuch'"),
    (["bench", "sampler", "--steps", "5000"], "error: --steps: respacing '5000' asks for 5000 steps"),
    (["bench", "sampler", "--samplers", "euler"], "error: unknown sampler 'euler'"),
    (["convert", "nosuch"], "error: unknown converter 'nosuch'"),
])
def test_clis_report_bad_input_without_traceback(args, message):
  proc = subprocess.run([sys.executable, "-m", f"unclip_jax.{args[0]}", *args[1:]], capture_output=True, text=True,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith(message), proc.stderr
  assert "Traceback" not in proc.stderr


def test_sampler_benchmark_runs_and_reports(tmp_path):
  out = tmp_path / "bench.json"
  proc = subprocess.run([sys.executable, "-m", "unclip_jax.bench", "sampler", "--steps", "8", "--batch", "8",
                         "--size", "8", "--repeats", "1", "--json", str(out)], capture_output=True, text=True,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stdout + proc.stderr
  rows = json.loads(out.read_text())["results"]
  assert {r["sampler"] for r in rows} == {"ddpm", "ddim"}
  assert all(r["n_steps"] == 8 and r["scan_ms_per_step"] > 0 for r in rows)


def test_positive_ints_reads_a_comma_list_and_names_the_flag_when_bad():
  assert positive_ints("1, 2,4,", "--devices") == [1, 2, 4]
  with pytest.raises(UserError, match=r"--devices must be comma-separated whole numbers, got '1,x'"):
    positive_ints("1,x", "--devices")
  for bad in ("0,2", "", ","):
    with pytest.raises(UserError, match=r"--batch must be positive"):
      positive_ints(bad, "--batch")
