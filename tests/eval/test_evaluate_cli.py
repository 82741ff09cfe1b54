"""`python -m unclip_jax.evaluate`: every suite end to end on a random-weights tiny pipeline (wiring, not
numbers), the evaluators cached and reused, and bad input as one `error:` line with exit status 2."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest

from unclip_jax import evaluate
from unclip_jax.data import shapes
from unclip_jax.errors import run_cli
from unclip_jax.eval import SUITES, clip_eval, features


@pytest.fixture(scope="module")
def pipe(request, tmp_path_factory):
  """A tiny random-weights pipeline folder: the session's shared one when conftest provides it."""
  try:
    return request.getfixturevalue("pipe_dir")
  except pytest.FixtureLookupError:
    from unclip_jax.pipeline import make_random_pipeline

    return make_random_pipeline(tmp_path_factory.mktemp("eval_pipe") / "tiny", "tiny", seed=0)


def _run(argv, capsys):
  with pytest.raises(SystemExit) as exit_info:
    run_cli(evaluate.main, [str(a) for a in argv])
  captured = capsys.readouterr()
  return exit_info.value.code, captured.out, captured.err


@pytest.mark.parametrize("args, words", [
    (["--suite", "fd"], "not a pipeline folder"),
    (["--suite", "poetry"], "unknown suite"),
    (["--suite", "fd", "--num", "0"], "--num must be at least 1"),
    (["--suite", "guidance", "--decoder-guidance", "1,x"], "--decoder-guidance"),
    (["--suite", "fd", "--decoder-candidates", "0"], "--decoder-candidates must be at least 1"),
    (["--suite", "fd", "--tasks", "single"], "--suite fd draws none"),
    (["--suite", "compositional", "--tasks", "single,colour"], "--tasks takes some of single, binding"),
    (["--suite", "all", "--tasks", ","], "--tasks takes some of"),
])
def test_bad_input_is_one_error_line(tmp_path, capsys, args, words, monkeypatch):
  from unclip_jax.pipeline import folder

  code, out, err = _run(["--checkpoint", tmp_path, "--out", tmp_path / "out", *args], capsys)
  assert code == 2 and out == ""
  assert err.startswith("error: ") and err.count("\n") == 1 and words in err, err
  monkeypatch.setattr(folder, "DEMO_PIPELINE", tmp_path / "not_installed")
  code, _, err = _run(["--suite", "fd"], capsys)  # no --checkpoint and no packaged demo
  assert code == 2 and err.startswith("error: ") and "no --checkpoint given" in err


@pytest.mark.slow
def test_every_suite_end_to_end(pipe, tmp_path, capsys, monkeypatch):
  out, cache = tmp_path / "out", tmp_path / "cache"
  argv = ["--checkpoint", pipe, "--suite", "all", "--num", 2, "--seed", 3, "--out", out, "--cache", cache,
          "--batch", 8, "--guidance-num", 8, "--decoder-guidance", "1,4", "--prior-guidance", "1",
          "--train-ref", 16, "--feature-steps", 5, "--eval-clip-steps", 5, "--decoder-steps", 2, "--prior-steps", 2,
          "--sr-steps", 1, "--no-progress"]
  code, stdout, err = _run(argv, capsys)
  assert code == 0, err
  results = json.loads((out / "results.json").read_text())
  assert set(SUITES) <= set(results) and results["meta"]["num"] == 2
  table = (out / "results.md").read_text()
  assert table == stdout[:len(table)]
  for suite in SUITES:
    assert f"| {suite} |" in table

  comp = results["compositional"]
  for task, cells in comp["tasks"].items():
    for split, cell in cells.items():
      assert cell["accuracy"]["n"] == 2
      assert cell["accuracy"]["k"] == 0, (task, split)  # random weights draw noise: the strict detector passes none
      if task != "position":  # (GenEval's rule can reject a real relation scene)
        assert cell["real_ceiling"]["rate"] == 1.0, (task, split)
      assert (out / "grids" / f"compositional_{task}_{split}.png").is_file()
  heldout_single = comp["tasks"]["single"]["heldout"]["by_object"]
  assert set(heldout_single) <= {f"{c} {s}" for c, s in shapes.HELDOUT_OBJECTS}
  assert sum(p["n"] for p in heldout_single.values()) == 2
  assert "| compositional | single, per held-out pair |" in table

  stages = results["stages"]
  assert stages["task"] == "single" and not stages["skipped"]
  for split, cell in stages["splits"].items():
    assert cell["real_ceiling"]["rate"] == 1.0
    for row in ("decoder_from_true_embedding", "upsampler_from_true_image"):
      assert cell[row]["n"] == 2 and cell[row]["k"] == 0, (row, split)  # random weights: noise
      assert (out / "grids" / f"stages_{row}_{split}.png").is_file()
    assert sum(p["n"] for p in cell["decoder_from_true_embedding_by_object"].values()) == 2

  fd = results["fd"]
  assert fd["generated_vs_real"]["fd"] > fd["real_vs_real_floor"]["fd"] >= -1e-6
  assert 0 <= fd["generated_vs_real"]["precision"] <= 1 and 0 <= fd["memorisation"]["copy_rate"] <= 1
  assert fd["evaluator"]["heldout_accuracy"]["n"] == 32

  clip = results["clip_score"]
  assert "self_check" in clip["evaluator_clip"] and clip["splits"]["heldout"]["generated"]["r_precision"]["n"] == 2
  assert clip["splits"]["seen"]["generated"]["candidates"] == 100

  zs = results["zeroshot"]
  assert {"colour", "shape", "colour_shape"} <= set(zs["shapes"]["heldout"])
  assert all(0 <= zs["linear_probe"][a][split]["rate"] <= 1 for a in ("colour", "shape") for split in ("seen", "heldout"))
  for extra in ("fashion_mnist", "emoji_heldout_style"):
    assert extra in zs or extra in zs.get("skipped", {})

  for split in ("seen", "heldout"):
    prior = results["prior"]["splits"][split]
    assert -1 <= prior["cos_prior_vs_image"]["mean"] <= 1 and prior["retrieval_top1_prior"]["pool"] == 2

  points = results["guidance"]["points"]
  assert [(p["prior_guidance"], p["decoder_guidance"]) for p in points] == [(1.0, 1.0), (1.0, 4.0)]
  assert all(math.isfinite(p["fd"]) and math.isfinite(p["clip_score"]) for p in points)
  if importlib.util.find_spec("matplotlib"):
    assert (out / "guidance.png").is_file()
  else:
    assert "matplotlib" in results["guidance"]["plot"]

  # --resume with every suite written runs none, and renders the same table from results.json
  import unclip_jax.eval

  monkeypatch.setattr(unclip_jax.eval, "suite_runner", lambda name: pytest.fail(f"suite {name} was run again"))
  code, stdout, err = _run([*argv, "--resume"], capsys)
  assert code == 0 and "resumed: compositional, stages, fd, clip_score, zeroshot, prior, guidance kept" in err, err
  assert (out / "results.md").read_text() == table and stdout.startswith(table)
  other = list(argv)
  other[other.index("--seed") + 1] = 4
  code, _, err = _run([*other, "--resume"], capsys)
  assert code == 2 and err.startswith("error: --resume: ") and "not written by this command" in err, err
  monkeypatch.undo()

  # the evaluators were saved in the cache and are reused, not retrained
  opts = evaluate.options(evaluate.parse([str(a) for a in argv]))
  monkeypatch.setattr(features, "train", lambda *a, **k: pytest.fail("the evaluator CNN was retrained"))
  monkeypatch.setattr(clip_eval, "train", lambda *a, **k: pytest.fail("the evaluator CLIP was retrained"))
  net = features.load_or_train(cache, opts.feature_net, log=lambda m: None)
  assert net.meta["config"]["steps"] == 5
  scorer, info = clip_eval.load_or_train(cache, opts.eval_clip_config, log=lambda m: None)
  assert info["evaluator"]["steps"] == 5 and scorer.config.embed_dim == 32


def test_the_resume_fingerprint_reads_back_from_json_and_keeps_older_runs_resumable():
  """`--resume` compares the fingerprint with the one results.json holds: it must survive JSON (tuples become
  lists), name --tasks when given, and leave it out at its default, as runs written before the option have it."""
  pipeline = {"meta": {"sampling": None}, "stages": {}}
  given = evaluate.fingerprint(evaluate.parse(["--suite", "compositional", "--tasks", "position,single"]), pipeline)
  assert json.loads(json.dumps(given)) == given and given["options"]["tasks"] == ["single", "position"]
  default = evaluate.fingerprint(evaluate.parse(["--suite", "compositional"]), pipeline)
  assert "tasks" not in default["options"] and default != given


def test_update_readme_replaces_only_the_marked_block(tmp_path):
  from unclip_jax.errors import UserError
  from unclip_jax.eval import report

  readme = tmp_path / "README.md"
  readme.write_text(f"# intro\n{report.BEGIN}\nold table\n{report.END}\nafter\n")
  report.replace_block(readme, "| new | table |")
  assert readme.read_text() == f"# intro\n{report.BEGIN}\n| new | table |\n{report.END}\nafter\n"
  (tmp_path / "plain.md").write_text("no markers\n")
  with pytest.raises(UserError, match="needs one line"):
    report.replace_block(tmp_path / "plain.md", "x")
  assert (tmp_path / "plain.md").read_text() == "no markers\n"


def test_candidates_and_steps_flags_become_stage_overrides():
  """--decoder-candidates grades with CLIP reranking (1: without), beside --decoder-steps for the same stage."""
  from unclip_jax import evaluate

  o = evaluate.options(evaluate.parse(["--suite", "compositional", "--decoder-steps", "5", "--decoder-candidates", "3",
                                         "--prior-candidates", "2"]))
  assert o.overrides == {"decoder": {"steps": "5", "candidates": 3}, "prior": {"candidates": 2}}
  assert evaluate.options(evaluate.parse(["--suite", "fd"])).overrides == {}


def test_results_are_written_after_each_suite(pipe, tmp_path, capsys, monkeypatch):
  """A long `all` run that stops part-way keeps its finished suites on disk, with the rest named as pending."""
  import unclip_jax.eval as eval_pkg
  from unclip_jax.errors import UserError

  real = eval_pkg.suite_runner

  def runner(name):
    if name == "zeroshot":
      def stop(ctx):
        written = json.loads((tmp_path / "out" / "results.json").read_text())
        assert set(written) == {"meta", "prior"} and written["meta"]["pending"] == ["zeroshot"]
        raise UserError("stopped on purpose")
      return stop
    return real(name)

  monkeypatch.setattr(eval_pkg, "SUITES", ("prior", "zeroshot"))
  monkeypatch.setattr(eval_pkg, "suite_runner", runner)
  argv = ["--checkpoint", pipe, "--suite", "all", "--num", 2, "--out", tmp_path / "out", "--cache", tmp_path / "cache",
          "--prior-steps", 2, "--no-extra-zeroshot", "--no-progress"]
  code, _, err = _run(argv, capsys)
  assert code == 2 and "stopped on purpose" in err
  written = json.loads((tmp_path / "out" / "results.json").read_text())
  assert set(written) == {"meta", "prior"} and written["meta"]["pending"] == ["zeroshot"]
  assert "| prior |" in (tmp_path / "out" / "results.md").read_text()

  # --resume: the finished suite is kept, the rest runs
  ran = []
  monkeypatch.setattr(eval_pkg, "suite_runner", lambda name: ran.append(name) or real(name))
  code, _, err = _run([*argv, "--resume"], capsys)
  assert code == 0 and ran == ["zeroshot"] and "resumed: prior kept" in err, err
  written = json.loads((tmp_path / "out" / "results.json").read_text())
  assert set(written) == {"meta", "prior", "zeroshot"} and "pending" not in written["meta"]
  assert written["meta"]["seconds"]["prior"] > 0 and "| zeroshot |" in (tmp_path / "out" / "results.md").read_text()
