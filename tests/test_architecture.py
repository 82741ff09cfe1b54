"""The house rules of docs/architecture.md, checked on the source: import layers, no import circles, no CLI
module imported by library code, and the size limits (modules ≤ 600 lines, classes ≤ 300)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "unclip_jax"

# unit (a top-level module or package of unclip_jax) -> layer; a unit may import only units of lower layers
LAYERS = {
    "errors": 0, "io": 0, "xla_flags": 0,
    "distributed": 1, "images": 1, "checkpoint": 1,
    "diffusion": 2, "models": 2, "outputs": 2,
    "data": 3,
    "pipeline": 4,
    "train": 5, "applications": 5,
    "eval": 6,
    "convert": 7,
    "bench": 8,
    "sample": 9, "zeroshot": 9, "embed": 9, "evaluate": 9,
}
# entry points: run with `python -m`, never imported by library code
CLI_MODULES = {"unclip_jax.sample", "unclip_jax.zeroshot", "unclip_jax.embed", "unclip_jax.evaluate",
               "unclip_jax.train.__main__", "unclip_jax.pipeline.__main__", "unclip_jax.convert.__main__",
               "unclip_jax.bench.__main__", "unclip_jax.data.prepare", "unclip_jax.train.curves"}


def _modules() -> dict[str, Path]:
  out = {}
  for path in sorted(ROOT.rglob("*.py")):
    parts = ("unclip_jax",) + path.relative_to(ROOT).with_suffix("").parts
    name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    out[name] = path
  return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
  """Every unclip_jax module `name` imports (at any depth of its code), resolved to a known module."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module:
      base = node.module
      targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
    else:
      continue
    for t in targets:
      while t and t not in MODULES:
        t = t.rpartition(".")[0]
      if t and t.startswith("unclip_jax") and t != name:
        found.add(t)
  return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _unit(module: str) -> str | None:
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else None


def test_every_unit_has_a_layer():
  units = {_unit(m) for m in MODULES} - {None}
  assert units <= set(LAYERS), f"add {sorted(units - set(LAYERS))} to LAYERS and docs/architecture.md"


def test_units_import_only_lower_layers():
  bad = []
  for module, targets in GRAPH.items():
    unit = _unit(module)
    for t in targets:
      other = _unit(t)
      if unit and other and other != unit and LAYERS[other] >= LAYERS[unit]:
        bad.append(f"{module} (layer {LAYERS[unit]}) imports {t} (layer {LAYERS[other]})")
  assert not bad, "\n".join(bad)


def test_no_library_module_imports_a_cli_module():
  bad = [f"{m} imports {t}" for m, targets in GRAPH.items() if m not in CLI_MODULES
         for t in targets & CLI_MODULES if not (m.endswith(".__main__") and t.startswith(m.rpartition(".")[0]))]
  assert not bad, "\n".join(bad)


def test_no_import_circles():
  state: dict[str, int] = {}
  stack: list[str] = []

  def visit(m):
    state[m] = 1
    stack.append(m)
    for t in sorted(GRAPH[m]):
      if state.get(t) == 1:
        pytest.fail("import circle: " + " -> ".join(stack[stack.index(t):] + [t]))
      if t not in state:
        visit(t)
    stack.pop()
    state[m] = 2
  for m in sorted(GRAPH):
    if m not in state:
      visit(m)


def test_the_layer_check_catches_a_model_importing_diffusion(tmp_path):
  """The rule is not vacuous: a models module importing diffusion is reported."""
  path = tmp_path / "bad.py"
  path.write_text("from unclip_jax.diffusion import gaussian\n")
  targets = _imports("unclip_jax.models.bad", path)
  assert "unclip_jax.diffusion.gaussian" in targets
  assert LAYERS[_unit("unclip_jax.diffusion.gaussian")] >= LAYERS["models"]


def test_size_limits():
  bad = []
  for name, path in MODULES.items():
    text = path.read_text()
    lines = text.count("\n")
    if lines > 600:
      bad.append(f"{name}: {lines} lines (> 600)")
    for node in ast.walk(ast.parse(text)):
      if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 300:
        bad.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines (> 300)")
  assert not bad, "\n".join(bad)
