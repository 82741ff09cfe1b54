"""`python -m unclip_jax.bench pipeline` on the tiny random pipeline (wiring; nothing is timed)."""

from __future__ import annotations


def test_pipeline_benchmark_reports_the_one_program_and_the_stages():
  from unclip_jax.bench import pipeline as bench

  steps = {"prior": {"steps": "2"}, "decoder": {"steps": "2"}, "sr_64_256": {"steps": "2"}}
  report = bench.run("tiny", [3], overrides=steps, stages=True, repeats=2, log=lambda m: None)
  (row,) = report["results"]
  assert row["rows"] == 3 and row["repeats"] == 2 and row["finite"]  # 3 images on 3 of the 8 devices, unpadded
  assert row["program"] == "text → prior 2 → decoder 2 → sr_64_256 2"
  assert row["compile_s"] > 0 and 0 < row["sampling_s"] <= row["wall_s"]
  assert set(row["stages"]) == {"clip_text", "prior", "decoder", "upsamplers"}
  assert all(v["compile_s"] > 0 for v in row["stages_first_call"].values()) and row["stages_wall_s"] > 0
