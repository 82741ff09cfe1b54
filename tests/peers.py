"""Imports the PyTorch peers used by parity tests, or skips the calling test module.

PyPI's torchvision is a CUDA build; next to the CPU torch wheel its C++ ops cannot register and
`import torchvision` (pulled in by diffusers and open_clip) raises
`RuntimeError: operator torchvision::nms does not exist`. `import_torchvision` lets those op
registrations fail quietly during the import: the pure-Python parts the peers use still work.
"""

from __future__ import annotations

import importlib
import os

import pytest

from unclip_jax.bench.torch_peers import import_torchvision  # one torchvision work-around for tests and benchmarks

REQUIRE = os.environ.get("UNCLIP_JAX_REQUIRE_PEERS") == "1"  # .ci/run sets it: a missing peer fails there


def _skip(reason: str):
  if REQUIRE:
    pytest.fail(f"{reason} (UNCLIP_JAX_REQUIRE_PEERS=1 makes this a failure)", pytrace=False)
  pytest.skip(reason, allow_module_level=True)


def require(module_name: str):
  """Imports a peer (`torch`, `diffusers`, `open_clip`, `guided_diffusion...`) or skips the test module
  (fails it under UNCLIP_JAX_REQUIRE_PEERS=1)."""
  try:
    import torch
  except ImportError as e:
    _skip(f"parity tests need the `peers` extra (torch: {e})")

  torch.set_num_threads(1)
  if module_name in ("diffusers", "open_clip", "transformers") or module_name.startswith(("diffusers.", "open_clip.")):
    import_torchvision()
  try:
    return importlib.import_module(module_name)
  except ImportError as e:
    _skip(f"parity peer {module_name} is not installed ({e}); install the `peers` extra")
