"""The candidates suite: every decoder candidate graded, each rater's pick read off. Its pipeline-rater pick
must be the image the compositional suite grades, its rates must follow from the grades, and its drawings
must be rated again, not redrawn, by a later run into the same folder."""

from __future__ import annotations

import json

import numpy as np
import pytest

from unclip_jax import evaluate
from unclip_jax.errors import run_cli
from unclip_jax.eval import candidates, compositional


def test_auc_and_cell_rates_follow_from_the_grades():
  passes = np.array([[1, 0, 0], [0, 0, 0], [1, 1, 0], [1, 1, 1]], bool)
  scores = np.array([[0.9, 0.1, 0.2], [0.3, 0.2, 0.1], [0.1, 0.5, 0.5], [0.4, 0.1, 0.2]])
  value, n = candidates.auc(passes, scores)
  # prompt 0: the right one above both wrong (1.0); prompt 2: right 0.1 < 0.5 (0), right 0.5 ties 0.5 (0.5)
  assert n == 2 and value == pytest.approx((1.0 + 0.25) / 2)
  cell = candidates.summarize(passes, {"a": scores, "b": -scores})
  assert cell["any_right"]["k"] == 3 and cell["first_right"]["k"] == 3
  assert cell["random_pick"] == pytest.approx(6 / 12)
  assert cell["raters"]["a"]["pick"]["k"] == 3  # rows 0, 2 (0.5 at index 1) and 3
  assert cell["raters"]["b"]["pick"]["k"] == 2  # rows 2 (its first, rated highest here) and 3 (all right)
  assert candidates.auc(passes[1:2], scores[1:2]) == (None, 0)


@pytest.mark.slow
def test_the_drawings_hold_what_generate_draws_and_keeps(pipe_dir):
  """Candidate 0 is the image drawn without candidates, and the pipeline rater's favourite is the image
  `generate` keeps, at the decoder's size and after upsampling; prompts in batches with the last one padded."""
  from unclip_jax.eval.context import Context, Options
  from unclip_jax.pipeline import Pipeline
  from unclip_jax.pipeline.candidates import Rater

  pipe = Pipeline.load(pipe_dir, log=lambda m: None)
  ctx = Context(pipe, Options(batch=4, progress=False, overrides={
      "decoder": {"steps": "2", "candidates": 3}, "prior": {"steps": "2"}, "sr_64_256": {"steps": "1"}}))
  captions = ["a red square", "a blue circle", "two green triangles", "a red circle", "a yellow square",
              "a purple triangle"]
  seeds = [11, 12, 13, 14, 15, 16]
  small, final, passes, scores = candidates.draw_all(ctx, captions, seeds, 3)
  assert scores == {}
  assert small.shape[:2] == final.shape[:2] == passes.shape == (6, 3)
  pick = Rater.of_pipeline(pipe).scores(small, captions).argmax(1)
  assert (pick != 0).any() and (pick == 0).any()  # both branches of the comparison below are exercised
  rows = np.arange(len(captions))
  kept = pipe.generate(captions, seeds, ctx.settings(), batch=4)
  np.testing.assert_allclose(small[rows, pick], kept["small"], atol=1e-4)
  assert np.abs(final[rows, pick].astype(int) - kept["images"]).max() <= 1
  plain = pipe.generate(captions, seeds, ctx.settings({"decoder": {"candidates": 1}}), batch=4)
  np.testing.assert_allclose(small[:, 0], plain["small"], atol=1e-4)
  assert np.abs(small[:, 1] - small[:, 0]).max() > 0.1  # the candidates differ: the comparisons can fail


def _run(argv, capsys):
  with pytest.raises(SystemExit) as exit_info:
    run_cli(evaluate.main, [str(a) for a in argv])
  captured = capsys.readouterr()
  return exit_info.value.code, captured.out, captured.err


def _redder_than_green(images, captions):
  """A stand-in detector that random weights pass about half the time (the real one passes no noise)."""
  means = np.asarray(images, np.float64).mean(axis=(1, 2))
  return [{"pass": bool(m[0] > m[1]), "clean": True, "objects": True, "relation_dataset": True,
           "negated_present": False} for m in means]


@pytest.mark.slow
def test_the_pipeline_raters_pick_is_what_the_compositional_suite_grades(pipe_dir, tmp_path, capsys, monkeypatch):
  from unclip_jax.pipeline import read_pipeline

  monkeypatch.setattr(compositional, "grade", _redder_than_green)
  own_clip = read_pipeline(pipe_dir)["paths"]["clip"]
  common = ["--checkpoint", pipe_dir, "--num", 3, "--seed", 2, "--batch", 4, "--decoder-candidates", 3,
            "--decoder-steps", 2, "--prior-steps", 2, "--sr-steps", 1, "--no-progress"]
  code, stdout, err = _run([*common, "--suite", "candidates", "--out", tmp_path / "cand", "--rerank-clip", own_clip],
                           capsys)
  assert code == 0, err
  got = json.loads((tmp_path / "cand" / "results.json").read_text())["candidates"]
  used = got["used_by_pipeline"]
  assert got["k"] == 3 and got["raters"] == [used, str(own_clip)]
  code, _, err = _run([*common, "--suite", "compositional", "--out", tmp_path / "comp"], capsys)
  assert code == 0, err
  comp = json.loads((tmp_path / "comp" / "results.json").read_text())["compositional"]["tasks"]
  # --tasks draws only the cells asked for (in the suite's order), each as the whole suite draws it
  code, _, err = _run([*common, "--suite", "compositional", "--tasks", "position,single", "--out", tmp_path / "two"],
                      capsys)
  assert code == 0, err
  two = json.loads((tmp_path / "two" / "results.json").read_text())["compositional"]
  assert list(two["tasks"]) == ["single", "position"]
  for task in two["tasks"]:
    for split in ("seen", "heldout"):
      assert two["tasks"][task][split]["accuracy"] == comp[task][split]["accuracy"], (task, split)
  assert two["overall"]["heldout"]["mean_over_tasks_without_negation"] == pytest.approx(
      (comp["single"]["heldout"]["accuracy"]["rate"] + comp["position"]["heldout"]["accuracy"]["rate"]) / 2)
  table = (tmp_path / "two" / "results.md").read_text()
  assert "| compositional | mean over single, position |" in table and "negation" not in table
  plain = [*common[:common.index("--decoder-candidates")], *common[common.index("--decoder-candidates") + 2:]]
  code, _, err = _run([*plain, "--decoder-candidates", 1, "--suite", "compositional", "--out", tmp_path / "c1"], capsys)
  assert code == 0, err
  first = json.loads((tmp_path / "c1" / "results.json").read_text())["compositional"]["tasks"]
  picks, anys = [], []
  for task in candidates.TASKS:
    for split in ("seen", "heldout"):
      cell = got["tasks"][task][split]
      pick = cell["raters"][used]["pick"]
      assert pick["k"] == comp[task][split]["accuracy"]["k"], (task, split)  # the image generate keeps
      assert cell["first_right"]["k"] == first[task][split]["accuracy"]["k"], (task, split)  # drawn without K
      assert cell["raters"][str(own_clip)] == cell["raters"][used]  # the same CLIP from its folder rates alike
      assert cell["first_right"]["k"] <= cell["any_right"]["k"] and pick["k"] <= cell["any_right"]["k"]
      picks.append(pick["k"])
      anys.append(cell["any_right"]["k"])
  assert 0 < sum(picks) < 24 and 0 < sum(anys)  # the grades vary: the comparison can fail
  table = (tmp_path / "cand" / "results.md").read_text()
  assert "| candidates | single: some candidate right |" in table and f"{used} (used) picks a right one" in table
  grid = (tmp_path / "cand" / "grids" / "candidates_single_heldout.txt").read_text().splitlines()
  assert len(grid) == 9 and sum("kept]" in line for line in grid) == 3
  from PIL import Image

  from unclip_jax.eval.images import MARK
  png = np.asarray(Image.open(tmp_path / "cand" / "grids" / "candidates_single_heldout.png").convert("RGB"))
  side = (png.shape[1] - 2) // 3  # 3 columns of framed tiles, each followed by the grid's 2 px gap
  tops = [tuple(png[2 + r * side, 2 + c * side + side // 2]) for r in range(3) for c in range(3)]
  assert [t == MARK for t in tops] == ["kept]" in line for line in grid]  # the kept one's frame has a blue top

  # into the same folder again, without the extra rater: the drawings are rated, not drawn
  saved = (tmp_path / "cand" / "candidates.npz").stat().st_mtime_ns
  monkeypatch.setattr(candidates, "draw_all", lambda *a: pytest.fail("drew again"))
  code, _, err = _run([*common, "--suite", "candidates", "--out", tmp_path / "cand"], capsys)
  assert code == 0 and "rated again" in err, err
  again = json.loads((tmp_path / "cand" / "results.json").read_text())["candidates"]
  assert again["raters"] == [used] and again["tasks"]["single"]["seen"]["raters"][used] == \
      got["tasks"]["single"]["seen"]["raters"][used]
  assert (tmp_path / "cand" / "candidates.npz").stat().st_mtime_ns == saved


def _parity(images, captions):
  """A stand-in detector that passes an image by the parity of its pixel sum: candidates of one prompt, alike to
  the eye at random weights, then pass and fail apart."""
  return [{**g, "pass": bool(int(np.asarray(im, np.int64).sum()) % 2)}
          for g, im in zip(_redder_than_green(images, captions), images, strict=True)]


@pytest.mark.slow
def test_candidates_rated_after_the_upsamplers_where_the_pipeline_rates_them_there(pipe_dir, tmp_path, capsys,
                                                                                    monkeypatch):
  """With --rate-upsampled every rater rates the output images: the pipeline rater's pick is again the image the
  compositional suite grades, and a later run rates the saved 64 px images again without drawing."""
  monkeypatch.setattr(compositional, "grade", _parity)
  common = ["--checkpoint", pipe_dir, "--num", 3, "--seed", 3, "--batch", 4, "--decoder-candidates", 3,
            "--decoder-steps", 2, "--prior-steps", 2, "--sr-steps", 1, "--no-progress"]
  code, _, err = _run([*common, "--rate-upsampled", "--suite", "candidates", "--out", tmp_path / "cand"], capsys)
  assert code == 0, err
  got = json.loads((tmp_path / "cand" / "results.json").read_text())
  assert got["meta"]["settings"]["decoder"]["rate_upsampled"] is True
  code, _, err = _run([*common, "--rate-upsampled", "--suite", "compositional", "--out", tmp_path / "comp"], capsys)
  assert code == 0, err
  comp = json.loads((tmp_path / "comp" / "results.json").read_text())["compositional"]["tasks"]
  code, _, err = _run([*common, "--suite", "candidates", "--out", tmp_path / "early"], capsys)
  assert code == 0, err
  early = json.loads((tmp_path / "early" / "results.json").read_text())["candidates"]
  used, late = got["candidates"]["used_by_pipeline"], got["candidates"]["tasks"]
  cells = [(t, s) for t in candidates.TASKS for s in ("seen", "heldout")]
  picks = [late[t][s]["raters"][used]["pick"]["k"] for t, s in cells]
  assert picks == [comp[t][s]["accuracy"]["k"] for t, s in cells]  # the image generate keeps
  assert [late[t][s]["any_right"] for t, s in cells] == [early["tasks"][t][s]["any_right"] for t, s in cells]
  aucs = [late[t][s]["raters"][used]["auc"] for t, s in cells]
  assert any(a is not None for a in aucs) and 0 < sum(picks) < 24  # grades vary: the comparisons can fail
  assert aucs != [early["tasks"][t][s]["raters"][used]["auc"] for t, s in cells]  # the same drawings, rated elsewhere

  monkeypatch.setattr(candidates, "draw_all", lambda *a: pytest.fail("drew again"))
  code, _, err = _run([*common, "--rate-upsampled", "--suite", "candidates", "--out", tmp_path / "cand"], capsys)
  assert code == 0 and "rated again" in err, err
  again = json.loads((tmp_path / "cand" / "results.json").read_text())["candidates"]["tasks"]
  assert abs(sum(again[t][s]["raters"][used]["pick"]["k"] for t, s in cells) - sum(picks)) <= 1  # uint8 rounding


@pytest.mark.parametrize("args, words", [
    (["--suite", "candidates"], "--decoder-candidates K"),
    (["--suite", "compositional", "--rerank-clip", "x"], "--suite candidates only"),
    (["--suite", "candidates", "--decoder-candidates", "2", "--rerank-clip", "no_such_folder"], "does not exist"),
    (["--suite", "candidates", "--decoder-candidates", "2", "--tasks", "single,negation"], "grades no negation"),
])
def test_bad_candidates_input_is_one_error_line(pipe_dir, tmp_path, capsys, args, words):
  code, out, err = _run(["--checkpoint", pipe_dir, "--out", tmp_path / "out", *args], capsys)
  assert code == 2 and out == "" and err.startswith("error: ") and err.count("\n") == 1 and words in err, err
  assert not (tmp_path / "out" / "results.json").exists()
