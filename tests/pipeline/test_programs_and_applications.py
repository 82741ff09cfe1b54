"""The traced pieces' helpers (bicubic resize as diffusers does it) and the applications' embedding math."""

from __future__ import annotations

import numpy as np
import pytest

from tests.peers import require
from unclip_jax import applications
from unclip_jax import pipeline as P


def test_textdiff_and_slerp_math():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(2, 8)).astype(np.float32)
  np.testing.assert_array_equal(applications.slerp(a, b, 0.0), a)
  np.testing.assert_array_equal(applications.slerp(a, b, 1.0), b)
  mid = applications.slerp(a, b, 0.5)
  assert np.isclose(np.linalg.norm(mid), (np.linalg.norm(a) + np.linalg.norm(b)) / 2, rtol=1e-5)
  ua, ub, um = (v / np.linalg.norm(v) for v in (a, b, mid))
  assert np.isclose(um @ ua, um @ ub, atol=1e-5)  # halfway along the great circle
  z = applications.textdiff_embeddings(a, b, b + 2 * a, [0.0, 1.0])
  np.testing.assert_array_equal(z[0], a)
  np.testing.assert_allclose(z[1], a / np.linalg.norm(a) * np.linalg.norm(a), rtol=1e-5)  # direction of +a
  with pytest.raises(ValueError, match="same text embedding"):
    applications.textdiff_embeddings(a, b, b, [0.5])


def test_bicubic_matches_diffusers_interpolate():
  """The SR conditioning image: F.interpolate(bicubic, align_corners=False, antialias=True)."""
  torch = require("torch")
  x = np.random.default_rng(0).normal(size=(2, 5, 5, 3)).astype(np.float32)
  ours = np.asarray(P.upsample_bicubic(x, 20))
  ref = torch.nn.functional.interpolate(torch.tensor(x.transpose(0, 3, 1, 2)), size=[20, 20], mode="bicubic",
                                        align_corners=False, antialias=True).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(ours, ref, atol=1e-5)
