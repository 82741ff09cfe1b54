"""`python -m unclip_jax.train.curves`: loss against step per run, one PNG."""

import json

import numpy as np
import pytest
from PIL import Image

from unclip_jax.errors import run_cli
from unclip_jax.train import curves


def _run_dir(root, name, losses):
  d = root / name
  d.mkdir()
  (d / "metrics.jsonl").write_text("".join(json.dumps({"step": i + 1, "loss": l}) + "\n" for i, l in enumerate(losses)))
  return d


def test_curves_png_and_smoothing(tmp_path, capsys):
  a = _run_dir(tmp_path, "prior", list(np.linspace(1.0, 0.1, 50)))
  b = _run_dir(tmp_path, "decoder", [0.5] * 10)
  np.testing.assert_allclose(curves.smooth(np.array([1.0, 3.0, 5.0]), 2), [1.0, 2.0, 4.0])
  with pytest.raises(SystemExit) as e:
    run_cli(curves.main, [str(a), str(b), "--out", str(tmp_path / "c.png")])
  assert e.value.code == 0
  with Image.open(tmp_path / "c.png") as im:
    assert im.format == "PNG" and im.size[0] > im.size[1] > 100  # two panels side by side
  with pytest.raises(SystemExit) as e:
    run_cli(curves.main, [str(tmp_path), "--out", str(tmp_path / "x.png")])
  assert e.value.code == 2 and "has no metrics.jsonl" in capsys.readouterr().err
