"""Emoji in four aligned art styles from the npm `@iconify-json/*` packages, rasterised with cairosvg.

The four icon sets name their icons by CLDR short name (`cat-face`, `red-apple`), so the same concept
can be drawn in every style; only concepts present in all four are used, which makes "style x concept"
a clean grid for holding out combinations. Everything is read from files unpacked by npm: nothing is
downloaded at run time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from unclip_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Style:
  name: str  # the word used in captions
  package: str  # npm package name
  version: str  # the version the dataset was built and tested with


STYLES = (
    Style("fluent", "@iconify-json/fluent-emoji-flat", "1.2.6"),
    Style("noto", "@iconify-json/noto", "1.2.9"),
    Style("twemoji", "@iconify-json/twemoji", "1.2.5"),
    Style("openmoji", "@iconify-json/openmoji", "1.2.29"),
)
NPM_INSTALL = ("npm install --prefix DIR " + " ".join(f"{s.package}@{s.version}" for s in STYLES))
DEFAULT_SOURCE = Path(__file__).resolve().parents[2] / ".cache" / "npm"  # where .ci/run installs them
SOURCE_ENV = "UNCLIP_JAX_EMOJI_SOURCE"


def package_dir(source: str | Path, style: Style) -> Path | None:
  """The folder holding `icons.json` of `style` under `source` (an npm prefix or an unpacked tree)."""
  root = Path(source)
  short = style.package.split("/")[1]
  for candidate in (root / "node_modules" / style.package, root / style.package, root / short,
                    root / f"{short}-{style.version}" / "package", root / "package"):
    if (candidate / "icons.json").is_file() and (candidate / "info.json").is_file():
      if candidate.name != "package" or _package_name(candidate) == style.package:
        return candidate
  return None


def _package_name(path: Path) -> str | None:
  try:
    return json.loads((path / "package.json").read_text())["name"]
  except (OSError, ValueError, KeyError):
    return None


@dataclasses.dataclass
class IconSet:
  """One style's icons (with aliases resolved) and its licence record."""
  style: Style
  icons: dict  # name -> {"body", "left", "top", "width", "height", "hFlip", "vFlip", "rotate"}
  license: dict  # {"spdx", "title", "url", "author", "author_url", "package", "version"}


def load_icon_set(source: str | Path, style: Style) -> IconSet:
  """Reads one npm package; a missing or malformed package is a `UserError` naming the install command."""
  path = package_dir(source, style)
  if path is None:
    raise UserError(f"{style.package} not found under {source}; install the emoji packages with "
                    f"`{NPM_INSTALL.replace('DIR', str(source))}`")
  try:
    data = json.loads((path / "icons.json").read_text())
    info = json.loads((path / "info.json").read_text())
    version = json.loads((path / "package.json").read_text()).get("version", "unknown") if (
        path / "package.json").is_file() else "unknown"
  except (OSError, ValueError) as e:
    raise UserError(f"cannot read {path}: {e}; reinstall it with `{NPM_INSTALL.replace('DIR', str(source))}`")
  if not isinstance(data.get("icons"), dict):
    raise UserError(f"{path / 'icons.json'} is not an iconify icon set (no 'icons' table)")
  defaults = {"left": data.get("left", 0), "top": data.get("top", 0), "width": data.get("width", 16),
              "height": data.get("height", 16)}
  icons = {}
  for name, icon in data["icons"].items():
    icons[name] = {**defaults, "hFlip": False, "vFlip": False, "rotate": 0,
                   **{k: v for k, v in icon.items() if k != "hidden"}}
  aliases = data.get("aliases", {})
  for name in aliases:
    resolved = _resolve_alias(name, aliases, icons)
    if resolved is not None:
      icons.setdefault(name, resolved)
  lic, author = info.get("license", {}), info.get("author", {})
  license_record = {"spdx": lic.get("spdx", "unknown"), "title": lic.get("title", ""), "url": lic.get("url", ""),
                    "author": author.get("name", ""), "author_url": author.get("url", ""),
                    "package": style.package, "version": version}
  return IconSet(style=style, icons=icons, license=license_record)


def _resolve_alias(name: str, aliases: dict, icons: dict, depth: int = 0) -> dict | None:
  """An alias is a parent icon plus transformations (iconify format); chains are followed."""
  alias = aliases[name]
  parent = alias.get("parent")
  if depth > 8 or parent is None:
    return None
  base = icons.get(parent) or (_resolve_alias(parent, aliases, icons, depth + 1) if parent in aliases else None)
  if base is None:
    return None
  out = dict(base)
  for key in ("left", "top", "width", "height"):
    out[key] = alias.get(key, out[key])
  out["hFlip"] = bool(out["hFlip"]) != bool(alias.get("hFlip", False))
  out["vFlip"] = bool(out["vFlip"]) != bool(alias.get("vFlip", False))
  out["rotate"] = (out["rotate"] + alias.get("rotate", 0)) % 4
  return out


def load_styles(source: str | Path) -> list[IconSet]:
  return [load_icon_set(source, style) for style in STYLES]


def common_concepts(icon_sets: list[IconSet]) -> list[str]:
  """Concept names present in every style, sorted (so a prefix of the list is a stable subset)."""
  return sorted(set.intersection(*(set(s.icons) for s in icon_sets)))


def concept_text(concept: str) -> str:
  """`cat-face` -> `cat face` (the CLDR short name as words)."""
  return concept.replace("-", " ")


def caption(style: Style, concept: str) -> str:
  """"a noto emoji of cat face", "an openmoji emoji of cat face"."""
  article = "an" if style.name[0] in "aeiou" else "a"
  return f"{article} {style.name} emoji of {concept_text(concept)}"


def pair_fraction(style_name: str, concept: str) -> float:
  """A fixed pseudo-random number in [0, 1) per (style, concept): the held-out split is a threshold on it."""
  digest = hashlib.sha256(f"emoji/{style_name}/{concept}".encode()).digest()
  return int.from_bytes(digest[:8], "big") / 2.0**64


def heldout_pairs(concepts: list[str], fraction: float) -> set[tuple[str, str]]:
  """(style, concept) pairs kept out of `train`; never all four styles of one concept."""
  held = set()
  for concept in concepts:
    ranked = sorted(STYLES, key=lambda s: pair_fraction(s.name, concept))
    chosen = [s.name for s in ranked if pair_fraction(s.name, concept) < fraction]
    held.update((name, concept) for name in chosen[:len(STYLES) - 1])
  return held


def svg_document(icon: dict, size: int) -> str:
  left, top, w, h = icon["left"], icon["top"], icon["width"], icon["height"]
  body = icon["body"]
  transforms = []
  if icon.get("rotate"):
    transforms.append(f"rotate({90 * icon['rotate']} {left + w / 2} {top + h / 2})")
  if icon.get("hFlip") or icon.get("vFlip"):
    sx, sy = (-1 if icon.get("hFlip") else 1), (-1 if icon.get("vFlip") else 1)
    tx = 2 * left + w if sx < 0 else 0
    ty = 2 * top + h if sy < 0 else 0
    transforms.append(f"translate({tx} {ty}) scale({sx} {sy})")
  if transforms:
    body = f'<g transform="{" ".join(transforms)}">{body}</g>'
  return (f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
          f'viewBox="{left} {top} {w} {h}" width="{size}" height="{size}">{body}</svg>')


def render(icon: dict, size: int, background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
  """The icon as a uint8 (size, size, 3) RGB array over a solid background (aspect kept, centred)."""
  try:
    import cairosvg
  except (ImportError, OSError) as e:  # cairosvg, or the libcairo2 it loads, is missing
    raise UserError(f"rendering emoji needs cairosvg and libcairo2 ({e}); run `pip install cairosvg`")
  png = cairosvg.svg2png(bytestring=svg_document(icon, size).encode("utf-8"), output_width=size,
                         output_height=size)
  rgba = Image.open(io.BytesIO(png)).convert("RGBA")
  canvas = Image.new("RGBA", rgba.size, (*background, 255))
  canvas.alpha_composite(rgba)
  return np.asarray(canvas.convert("RGB"), np.uint8)
