"""The launchers in launch/: shellcheck-clean, listed in the README's launcher table, and the cluster ones
print what they would run (dry run) with the coordinator, process count and per-process index right."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SCRIPTS = sorted([*LAUNCH.glob("*.sh"), *LAUNCH.glob("*.sbatch")])
ARGS = ["--config", "configs/decoder.py:karlo", "--workdir", "/shared/runs/my decoder"]


def run(script, env, *args):
  out = subprocess.run(["bash", str(LAUNCH / script), *args], env={**os.environ, **env}, capture_output=True,
                       text=True, timeout=60)
  assert out.returncode == 0, out.stderr
  return out.stdout


def test_every_launcher_is_shellcheck_clean():
  if shutil.which("shellcheck") is None:
    if os.environ.get("CI"):
      pytest.fail("shellcheck is not installed (.ci/run installs it)")
    pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
  out = subprocess.run(["shellcheck", "-x", *map(str, SCRIPTS)], capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stdout


def test_every_launcher_is_in_the_readme_table():
  readme = (REPO / "README.md").read_text()
  table = [line.strip() for line in readme.splitlines() if line.strip().startswith("| `launch/")]
  for path in [*SCRIPTS, LAUNCH / "k8s" / "job.yaml"]:
    rel = path.relative_to(REPO).as_posix()
    assert any(f"`{rel}" in line for line in table), f"{rel} is missing from the README's launcher table"


@pytest.mark.parametrize("with_scontrol", [True, False], ids=["scontrol", "no-slurm-tools"])
def test_slurm_dry_run_starts_one_task_per_node_with_the_first_host_as_coordinator(tmp_path, with_scontrol):
  path = os.environ["PATH"]
  if with_scontrol:  # a stand-in for Slurm's own expansion of the node list
    fake = tmp_path / "scontrol"
    fake.write_text("#!/bin/sh\nprintf 'gpu03\\ngpu04\\ngpu07\\n'\n")
    fake.chmod(0o755)
    path = f"{tmp_path}:{path}"
  else:
    path = ":".join(p for p in path.split(":") if not (Path(p) / "scontrol").exists())
  out = run("slurm.sbatch", {"PATH": path, "DRY_RUN": "1", "SLURM_JOB_NODELIST": "gpu[03-04,07]", "SLURM_NNODES": "3",
                             "PORT": "23456"}, *ARGS)
  assert out.splitlines()[0] == "UNCLIP_JAX_COORDINATOR=gpu03:23456 UNCLIP_JAX_NUM_PROCESSES=3"
  srun = out.splitlines()[1]
  assert srun.startswith("srun --nodes=3 --ntasks=3 --ntasks-per-node=1 ")
  assert "UNCLIP_JAX_PROCESS_ID=\\$SLURM_PROCID" in srun and "unclip_jax.train" in srun
  assert "my\\ decoder" in srun  # arguments survive quoting


def test_kubernetes_dry_run_renders_an_indexed_job_and_a_headless_service():
  yaml = pytest.importorskip("yaml")
  out = run("k8s.sh", {"DRY_RUN": "1", "NAME": "dec", "NNODES": "4", "IMAGE": "reg/unclip:1", "PVC": "runs"}, *ARGS)
  service, job = list(yaml.safe_load_all(out))
  assert service["kind"] == "Service" and service["spec"]["clusterIP"] == "None"
  assert service["spec"]["selector"] == {"job-name": "dec"} and service["spec"]["ports"][0]["port"] == 12355
  spec = job["spec"]
  assert job["kind"] == "Job" and spec["completionMode"] == "Indexed" and spec["completions"] == 4
  assert spec["parallelism"] == 4 and spec["template"]["spec"]["subdomain"] == "dec"
  container = spec["template"]["spec"]["containers"][0]
  env = {e["name"]: e["value"] for e in container["env"]}
  assert env == {"UNCLIP_JAX_COORDINATOR": "dec-0.dec:12355", "UNCLIP_JAX_NUM_PROCESSES": "4"}
  command = container["args"][0]
  assert "UNCLIP_JAX_PROCESS_ID=$JOB_COMPLETION_INDEX" in command
  assert "-m unclip_jax.train --no_progress --config configs/decoder.py:karlo" in command
  assert "my\\ decoder" in command and "${" not in out
  assert container["resources"]["limits"] == {"nvidia.com/gpu": 8}


def _demo_calls(tmp_path, env, expect="FAILED decoder (exit 3)", exit_code=None):
  """Runs launch/train_demo.sh with a stand-in `python` that records every call: `train` succeeds (a checkpoint and
  an export at its --config.train.steps, 100 without one) until the decoder, which fails, so the script stops there
  with its one FAILED line and a non-zero exit. FAKE_STOP=STAGE makes that stage stop early instead (a checkpoint
  one step short, no export). Returns the recorded calls, each a list of arguments."""
  calls = tmp_path / "calls"
  fake = tmp_path / "bin" / "python"
  fake.parent.mkdir(exist_ok=True)
  fake.write_text(f"""#!/usr/bin/env bash
printf '%s\\n' "$@" '--END--' >> {calls}
if [ "$2" = unclip_jax.train ]; then
  workdir=$(printf '%s\\n' "$@" | sed -n '/^--workdir$/{{n;p}}')
  steps=$(printf '%s\\n' "$@" | sed -n 's/^--config.train.steps=//p' | tail -n 1)
  steps=${{steps:-100}}
  [ "$workdir" = decoder ] && exit 3
  if [ "$workdir" = "${{FAKE_STOP-}}" ]; then mkdir -p "$workdir/checkpoints/$((steps - 1))"; exit 0; fi
  mkdir -p "$workdir/checkpoints/$steps" "$workdir/export"
  printf '{{\\n  "kind": "x",\\n  "step": %s\\n}}\\n' "$steps" > "$workdir/export/stage.json"
fi
""")
  fake.chmod(0o755)
  env = {"PATH": f"{fake.parent}:{os.environ['PATH']}", **env}
  out = subprocess.run(["bash", str(LAUNCH / "train_demo.sh"), str(tmp_path / "run")], env={**os.environ, **env},
                       capture_output=True, text=True, timeout=60)
  assert out.returncode != 0 and expect in out.stdout + out.stderr, out.stdout + out.stderr
  if exit_code is not None:
    assert out.returncode == exit_code, out.stdout + out.stderr
  return [c.strip("\n").split("\n") for c in calls.read_text().split("--END--\n") if c.strip()] \
    if calls.exists() else []


def _trains(commands):
  return [(c[c.index("--workdir") + 1], c) for c in commands if c[:2] == ["-m", "unclip_jax.train"]]


def test_train_demo_trains_a_stage_in_legs_and_a_rerun_skips_the_legs_passed(tmp_path):
  """DEMO_<STAGE>_LEGS runs that stage's `train` once per leg, each to its step count (after DEMO_<STAGE>_ARGS, so
  the leg's count wins), in the same workdir; a rerun runs only the legs the workdir has not passed."""
  env = {"DEMO_CLIP_LEGS": "2000  4000", "DEMO_CLIP_ARGS": "--config.train.steps=1 --config.seed=3"}
  clip = [c for name, c in _trains(_demo_calls(tmp_path, env)) if name == "clip"]
  assert [c[-3:] for c in clip] == [["--config.train.steps=1", "--config.seed=3", f"--config.train.steps={n}"]
                                    for n in (2000, 4000)]
  (tmp_path / "calls").unlink()
  run = tmp_path / "run" / "clip"
  (run / "checkpoints" / "4000").rmdir()
  (run / "checkpoints" / "3000").mkdir()  # stopped in the second leg
  clip = [c for name, c in _trains(_demo_calls(tmp_path, env)) if name == "clip"]
  assert [c[-1] for c in clip] == ["--config.train.steps=4000"]
  times = (tmp_path / "run" / "logs" / "times.txt").read_text().split()
  assert times[0::2].count("clip") == 3  # each leg's wall time, summed into the shipped wall_seconds


def test_train_demo_stops_where_a_stage_stopped_early_even_with_an_older_export(tmp_path):
  """A stage extended past a finished run and stopped (SIGTERM: a checkpoint, exit 0, no new export) keeps its older
  export: the script stops there instead of going on with the older weights."""
  (tmp_path / "run" / "clip" / "checkpoints" / "100").mkdir(parents=True)
  (tmp_path / "run" / "clip" / "export").mkdir()
  (tmp_path / "run" / "clip" / "export" / "stage.json").write_text('{\n  "step": 100\n}\n')
  commands = _demo_calls(tmp_path, {"FAKE_STOP": "clip", "DEMO_CLIP_ARGS": "--config.train.steps=400"},
                         expect="clip stopped at step 399 before its last step (export: 100)")
  assert [name for name, _ in _trains(commands)] == ["clip"]


def test_train_demo_refuses_legs_that_do_not_increase_before_any_work(tmp_path):
  commands = _demo_calls(tmp_path, {"DEMO_DECODER_LEGS": "12000 7200"}, exit_code=2,
                         expect='error: DEMO_DECODER_LEGS="12000 7200" must be increasing step counts')
  assert commands == [] and not (tmp_path / "run").exists()
  _demo_calls(tmp_path, {"DEMO_SR_LEGS": "2k"}, exit_code=2, expect="DEMO_SR_LEGS")


def test_train_demo_passes_each_stages_overrides_to_its_train_command_only(tmp_path):
  """DEMO_<STAGE>_ARGS reaches that stage's `train` command, split into words, and no other command."""
  commands = _demo_calls(tmp_path, {"DEMO_DECODER_ARGS": "--config.train.steps=36000  --config.train.batch_size=64",
                                    "DEMO_CLIP_ARGS": ""})
  trains = dict(_trains(commands))
  assert list(trains) == ["clip", "rerank_clip", "prior", "decoder"]
  assert _option(trains["rerank_clip"], "--config").endswith("configs/clip.py:demo_rerank")
  assert trains["decoder"][-2:] == ["--config.train.steps=36000", "--config.train.batch_size=64"]
  for stage in ("clip", "rerank_clip", "prior"):  # an empty or unset variable adds nothing, not even an empty argument
    assert trains[stage][-1] == "--no_progress", trains[stage]
  assert not any("--config.train.steps=36000" in c for c in commands if c[:2] != ["-m", "unclip_jax.train"])


def _option(command, flag):
  return command[command.index(flag) + 1]


def test_train_demo_embeds_the_sets_it_prepares_under_the_names_the_prior_and_decoder_read(tmp_path):
  """Every `embed` call reads a shapes config that a `prepare shapes` call of the script built (its sizes, seed
  and unnamed share spell the name), and the prior's and decoder's `demo` configs read sets it embedded."""
  from tests.models.test_model_configs import load_config
  from unclip_jax.data import prepare

  commands = _demo_calls(tmp_path, {})
  built = set()
  for c in commands:
    if c[:3] == ["-m", "unclip_jax.data.prepare", "shapes"]:
      args = prepare._parse(c[2:])
      config = prepare.shapes_config(args.image_size, args.train_size, args.heldout_size, args.seed, args.negation,
                                     args.unnamed, args.unnamed_kinds)
      built.add(config if isinstance(config, str) else config.name)
  embeds = {_option(c, "--name"): _option(c, "--dataset_config")
            for c in commands if c[:2] == ["-m", "unclip_jax.embed"]}
  assert embeds and set(embeds.values()) <= built, (embeds, built)
  for stage in ("prior", "decoder"):
    assert load_config(stage, "demo").data.config in embeds, stage


def test_train_demo_evaluate_command_parses_and_resumes():
  """The script's `evaluate` line uses flags evaluate knows, with --resume: a stopped evaluation reruns only the
  suites it had not finished (a partial eval/results.json is not mistaken for a finished one)."""
  import shlex

  from unclip_jax import evaluate

  text = (LAUNCH / "train_demo.sh").read_text().replace("\\\n", " ")
  line = next(x for x in text.split("\n") if "-m unclip_jax.evaluate" in x and not x.lstrip().startswith("#"))
  words = shlex.split(line.split("-m unclip_jax.evaluate", 1)[1])
  args = evaluate.parse(words)
  assert args.resume and args.suite == "all" and args.out == "eval" and args.update_readme.endswith("README.md")
  assert "[ -f eval/results.json ]" not in text
