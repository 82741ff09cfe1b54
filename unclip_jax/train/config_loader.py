"""Loads `configs/<stage>.py:<preset>` and applies `--config.a.b=value` overrides, with clear errors.

A config file exposes `get_config(arg)`; `PATH:ARG` passes ARG (the preset name). Overrides are parsed
to the type of the field they replace, and a key that does not exist is an error that lists the keys
that do, so a typo can never silently train the wrong model.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from typing import Sequence

import ml_collections

from unclip_jax.errors import UserError


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """`configs/decoder.py:tiny` → the ConfigDict its `get_config("tiny")` returns."""
  path, _, arg = spec.partition(":")
  file = Path(path)
  if not file.is_file():
    raise UserError(f"config file {path} does not exist; pass e.g. --config configs/decoder.py:tiny")
  module_spec = importlib.util.spec_from_file_location(f"unclip_jax_config_{file.stem}", file)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except SyntaxError as e:
    raise UserError(f"config file {path} has a syntax error on line {e.lineno}: {e.msg}") from None
  if not hasattr(module, "get_config"):
    raise UserError(f"config file {path} has no get_config(arg) function")
  try:
    config = module.get_config(arg or None)
  except (ValueError, KeyError) as e:
    message = e.args[0] if e.args else str(e)
    raise UserError(f"{path}: {message}") from None
  return config


def _parse_value(text: str, current):
  if isinstance(current, bool):
    if text.lower() in ("true", "1", "yes"):
      return True
    if text.lower() in ("false", "0", "no"):
      return False
    raise ValueError(f"expected true or false, got {text!r}")
  if isinstance(current, int):
    return int(text)
  if isinstance(current, float):
    return float(text)
  if isinstance(current, str):
    return text
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text
  if isinstance(current, tuple) and isinstance(value, list):
    value = tuple(value)
  return value


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> ml_collections.ConfigDict:
  """Applies `a.b=value` strings (the `--config.` prefix already removed) to `config`."""
  for item in overrides:
    key, sep, text = item.partition("=")
    if not sep:
      raise UserError(f"config override {item!r} needs a value: --config.{key}=VALUE")
    node, parts = config, key.split(".")
    for depth, part in enumerate(parts):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        where = ".".join(parts[:depth]) or "the config"
        known = ", ".join(sorted(node.keys())) if isinstance(node, ml_collections.ConfigDict) else "none"
        raise UserError(f"unknown config key {key!r}: {where} has no field {part!r} (its fields: {known})")
      if depth < len(parts) - 1:
        node = node[part]
    current = node[parts[-1]]
    if isinstance(current, ml_collections.ConfigDict):
      raise UserError(f"config key {key!r} is a group; set one of its fields: {', '.join(sorted(current.keys()))}")
    try:
      node[parts[-1]] = _parse_value(text, current)
    except (ValueError, TypeError) as e:
      raise UserError(f"bad value for config key {key!r}: {e}") from None
  return config
