"""`UNCLIP_JAX_REQUIRE_PEERS=1` (set by .ci/run) turns a parity test's skip for a missing peer into a failure."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("required,outcome", [("0", "1 skipped"), ("1", "1 failed")])
def test_a_missing_peer_skips_or_fails(required, outcome, tmp_path):
  test = tmp_path / "test_needs_a_peer.py"
  test.write_text("from tests.peers import require\n\n\ndef test_it():\n  require('no_such_peer_module')\n")
  env = {"UNCLIP_JAX_REQUIRE_PEERS": required, "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
         "JAX_PLATFORMS": "cpu"}
  r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
                      str(test)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
  assert outcome in r.stdout, r.stdout + r.stderr
