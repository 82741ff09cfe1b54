"""The metric functions of `unclip_jax.eval` on inputs whose answers are known in closed form."""

from __future__ import annotations

import numpy as np
import pytest

from unclip_jax.eval import frechet, manifold, retrieval, stats


def test_fd_of_a_set_with_itself_is_zero():
  x = np.random.default_rng(0).normal(size=(400, 16)) @ np.random.default_rng(1).normal(size=(16, 16))
  assert abs(frechet.frechet_distance(x, x)) < 1e-8
  # singular covariances (fewer samples than dimensions) stay finite and still give ~0 (the square
  # roots of round-off-sized eigenvalues leave ~1e-7 each, against a trace of ~30)
  y = np.random.default_rng(2).normal(size=(5, 32))
  assert abs(frechet.frechet_distance(y, y)) < 1e-5


def test_fd_of_shifted_gaussians_is_the_squared_shift():
  mu = np.array([3.0, -1.0, 0.5, 2.0])
  eye = np.eye(4)
  assert frechet.frechet_distance_from_stats(np.zeros(4), eye, mu, eye) == pytest.approx(mu @ mu, abs=1e-10)
  # diagonal covariances: FD = |mu|^2 + sum (sqrt(a) - sqrt(b))^2
  a, b = np.array([1.0, 4.0, 9.0, 0.25]), np.array([4.0, 1.0, 9.0, 1.0])
  want = mu @ mu + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  assert frechet.frechet_distance_from_stats(np.zeros(4), np.diag(a), mu, np.diag(b)) == pytest.approx(want, abs=1e-10)
  # non-commuting covariances: tr((S1 S2)^1/2) computed through the symmetric form equals scipy's sqrtm
  from scipy import linalg
  rng = np.random.default_rng(3)
  m1, m2 = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
  s1, s2 = m1 @ m1.T, m2 @ m2.T
  ref = np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
  assert frechet.frechet_distance_from_stats(np.zeros(4), s1, np.zeros(4), s2) == pytest.approx(ref, rel=1e-8)
  # and from samples: N(0, I) vs N(mu, I)
  rng = np.random.default_rng(4)
  x, y = rng.normal(size=(20000, 4)), rng.normal(size=(20000, 4)) + mu
  assert frechet.frechet_distance(x, y) == pytest.approx(mu @ mu, abs=0.05)


def test_kid_is_zero_within_a_distribution_and_not_between():
  rng = np.random.default_rng(0)
  a, b, c = rng.normal(size=(600, 8)), rng.normal(size=(600, 8)), rng.normal(size=(600, 8)) + 1.0
  same = frechet.kid(a, b, subsets=20, subset_size=300)
  other = frechet.kid(a, c, subsets=20, subset_size=300)
  assert abs(same["mean"]) < 0.02
  assert other["mean"] > 0.5 and other["mean"] > 20 * abs(same["mean"])


def test_precision_recall():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(200, 6))
  assert manifold.precision_recall(x, x.copy()) == {"precision": 1.0, "recall": 1.0, "k": 3}
  far = manifold.precision_recall(x, x + 100.0)
  assert far["precision"] == 0.0 and far["recall"] == 0.0
  # a generator covering only half of the data: high precision, recall near one half
  half = x[x[:, 0] > 0]
  pr = manifold.precision_recall(x, half)
  assert pr["precision"] == 1.0 and 0.3 < pr["recall"] < 0.8


def test_memorisation_flags_copies():
  rng = np.random.default_rng(0)
  train = rng.normal(size=(300, 5))
  copies = manifold.memorisation(train[:50] + 1e-6, train)
  fresh = manifold.memorisation(rng.normal(size=(300, 5)), train)
  assert copies["copy_rate"] == 1.0 and copies["ratio"] < 1e-3
  assert fresh["copy_rate"] < 0.05 and 0.5 < fresh["ratio"] < 2.0


def test_r_precision_and_retrieval_with_perfect_embeddings():
  rng = np.random.default_rng(0)
  table = rng.normal(size=(300, 32))  # one embedding per caption id: a perfect image encoder returns its caption's
  ids = np.arange(100)
  distractor_ids = np.stack([rng.choice(np.delete(np.arange(300), i), 99, replace=False) for i in ids])
  assert retrieval.r_precision(table[ids], table[ids], table[distractor_ids]) == 1.0
  assert retrieval.clip_score(table[ids], table[ids]) == pytest.approx(100.0)
  # an encoder that ignores the image: chance level
  noise = rng.normal(size=(100, 32))
  assert retrieval.r_precision(noise, table[ids], table[distractor_ids]) < 0.1
  assert retrieval.top1_retrieval(table[:250], table[:250], pool=100) == {"top1": 1.0, "pool": 100, "n": 250}


def test_wilson_interval_known_values():
  # Newcombe (1998), Statistics in Medicine 17:857, Table I, method 3 (score interval without correction)
  assert stats.wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
  assert stats.wilson_interval(15, 148) == pytest.approx((0.0624, 0.1605), abs=1e-4)
  assert stats.wilson_interval(0, 20) == pytest.approx((0.0, 0.1611), abs=1e-4)
  assert stats.wilson_interval(1, 29) == pytest.approx((0.0061, 0.1718), abs=1e-4)
  # symmetric cases: 5 of 10 is centred on 0.5; 0 and n give the closed forms z²/(n+z²) and n/(n+z²)
  z2 = stats.Z95 ** 2
  assert stats.wilson_interval(5, 10) == pytest.approx((0.236593, 0.763407), abs=1e-6)
  assert stats.wilson_interval(0, 10) == pytest.approx((0.0, z2 / (10 + z2)), abs=1e-12)
  assert stats.wilson_interval(10, 10) == pytest.approx((10 / (10 + z2), 1.0), abs=1e-12)
  p = stats.proportion([True, False, True, True])
  assert p["rate"] == 0.75 and p["k"] == 3 and p["n"] == 4
  with pytest.raises(ValueError):
    stats.wilson_interval(3, 2)


def test_task_means_leave_negation_out_of_the_drawing_mean_and_report_both():
  from unclip_jax.eval import compositional, prompts, report

  rates = {"single": 0.8, "binding": 0.4, "counting": 0.6, "position": 0.2, "negation": 0.0}
  assert set(rates) == set(prompts.TASKS)
  tasks = {t: {s: {"accuracy": {"rate": r + (0.1 if s == "seen" else 0.0)}} for s in prompts.SPLITS}
           for t, r in rates.items()}
  overall = compositional.task_means(tasks)
  assert overall["heldout"]["mean_over_tasks_without_negation"] == pytest.approx(0.5)
  assert overall["heldout"]["mean_over_tasks"] == pytest.approx(0.4)
  assert overall["seen"]["mean_over_tasks_without_negation"] == pytest.approx(0.6)
  table = {r[1]: r for r in report.rows({"compositional": {"tasks": {}, "overall": overall, "num_per_cell": 7}})}
  assert table["mean over single, binding, counting, position"][2:4] == ("0.6", "0.5")
  assert table["mean over tasks, negation included"][3] == "0.4"
  # --tasks: the means over the tasks drawn, named; no negation row without negation
  two = compositional.task_means({t: tasks[t] for t in ("single", "position")})
  assert two["heldout"] == {"tasks": ["single", "position"], "mean_over_tasks": pytest.approx(0.5),
                            "mean_over_tasks_without_negation": pytest.approx(0.5)}
  table = {r[1]: r for r in report.rows({"compositional": {"tasks": {}, "overall": two, "num_per_cell": 7}})}
  assert table["mean over single, position"][2:4] == ("0.6", "0.5") and len(table) == 1
  old = {s: {k: v for k, v in overall[s].items() if k != "tasks"} for s in overall}  # written before --tasks
  assert [r[1] for r in report.rows({"compositional": {"tasks": {}, "overall": old, "num_per_cell": 7}})] == \
      ["mean over single, binding, counting, position", "mean over tasks, negation included"]


def test_single_object_accuracy_is_also_reported_per_named_pair():
  from unclip_jax.eval import compositional, report

  captions = ["a orange circle", "a white square", "a orange circle", "a orange circle", "a white square"]
  checks = [{"pass": p, "clean": True, "objects": p} for p in (False, True, True, False, True)]
  cell = compositional.summarize(checks, "single", captions)
  assert list(cell["by_object"]) == ["orange circle", "white square"]
  assert (cell["by_object"]["orange circle"]["k"], cell["by_object"]["orange circle"]["n"]) == (1, 3)
  assert cell["by_object"]["white square"]["rate"] == 1.0
  assert "by_object" not in compositional.summarize(checks, "binding", captions)
  with pytest.raises(ValueError, match="outside the shapes grammar"):
    compositional.by_object(checks[:1], ["an orange circle"])
  empty = {"accuracy": cell["accuracy"], "real_ceiling": cell["accuracy"]}
  results = {"compositional": {"tasks": {"single": {"seen": empty, "heldout": cell | {"real_ceiling": cell["accuracy"]}}},
                               "overall": {"seen": {"mean_over_tasks": 1.0, "mean_over_tasks_without_negation": 1.0},
                                           "heldout": {"mean_over_tasks": 0.6, "mean_over_tasks_without_negation": 0.6}},
                               "num_per_cell": 5}}
  table = {r[1]: r for r in report.rows(results)}
  assert table["single, per held-out pair"][3] == "orange circle 1/3, white square 2/2"
