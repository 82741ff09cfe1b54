"""`python -m unclip_jax.convert {clip,karlo} ...`: turn PyTorch / safetensors weights into stage checkpoints.

Each converter lives in its own module (`convert/clip.py`, `convert/karlo_pipeline.py`) and exposes
`main(argv) -> int`; this entry point only dispatches on the first word.
"""

from __future__ import annotations

import importlib
import sys

from unclip_jax.errors import UserError, run_cli

CONVERTERS = {
    "clip": "unclip_jax.convert.clip",    # OpenAI CLIP / open_clip state dicts
    "karlo": "unclip_jax.convert.karlo_pipeline",  # a released Karlo folder (diffusers layout) → pipeline folder
}


def main(argv):
  if not argv or argv[0] in ("-h", "--help"):
    print(f"usage: python -m unclip_jax.convert {{{','.join(CONVERTERS)}}} ...  (add --help after the name)")
    return 0 if argv else 2
  name, rest = argv[0], argv[1:]
  if name not in CONVERTERS:
    raise UserError(f"unknown converter {name!r}; choose one of: {', '.join(CONVERTERS)}")
  return importlib.import_module(CONVERTERS[name]).main(rest)


if __name__ == "__main__":
  run_cli(main, sys.argv[1:])
