"""Writes docs/api.md: the public API, one line per name, from each package's `__all__` and the
docstrings.

Run from the repository root: `.venv/bin/python docs/make_api.py` (writes docs/api.md);
`--check` exits 1 when docs/api.md differs from what the code says (tests/test_public_api.py runs
it). A package's public face is its `__all__` (pinned by tests/test_public_api.py); each module
lists its own `__all__` (tests/test_module_all.py requires one in every module and holds it to
the names other files read). A module the package does not name (it re-exports names from it)
follows the package's list with the names of its `__all__` the package does not re-export.
Underscored modules are internal and not listed.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import sys
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "docs", "api.md")
PACKAGES = ("streampro_jax", "streampro_jax.models", "streampro_jax.sampling",
            "streampro_jax.data", "streampro_jax.data.tfds_builders", "streampro_jax.train",
            "streampro_jax.bench")


def first_line(obj) -> str:
  """The first sentence-line of an object's own docstring ('' when it has none)."""
  plain = isinstance(obj, (int, float, str, tuple, list, dict, frozenset, set))
  doc = None if plain else inspect.getdoc(obj)
  return (doc or "").strip().split("\n")[0].strip()


def member(pkg, name: str):
  obj = getattr(pkg, name, None)
  if obj is None:
    obj = importlib.import_module(f"{pkg.__name__}.{name}")
  return obj


def module_names(mod: types.ModuleType) -> list[str]:
  """A module's public names: its __all__; for a module tests/test_module_all.py still lists as
  pending, the public functions, classes and constants it defines at top level."""
  if hasattr(mod, "__all__"):
    return list(mod.__all__)
  out = []
  for name, obj in vars(mod).items():
    if name.startswith("_") or isinstance(obj, types.ModuleType):
      continue
    if (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ != mod.__name__:
      continue  # imported, not defined here
    if not (inspect.isfunction(obj) or inspect.isclass(obj) or name.isupper()):
      continue  # module-level helpers that are not constants (loggers, type aliases, ...)
    out.append(name)
  return sorted(out)


def unnamed_modules(pkg: types.ModuleType) -> list[types.ModuleType]:
  """The modules of a package that its __all__ does not name and that are not underscored."""
  folder = os.path.dirname(pkg.__file__)
  out = []
  for entry in sorted(os.listdir(folder)):
    name = entry[:-3] if entry.endswith(".py") else entry
    is_module = entry.endswith(".py") and entry != "__init__.py"
    if is_module and not name.startswith("_") and name not in pkg.__all__:
      out.append(importlib.import_module(f"{pkg.__name__}.{name}"))
  return out


def kind(obj) -> str:
  if inspect.isclass(obj):
    return "class"
  if callable(obj):
    return "function"
  return "constant"


def render() -> str:
  lines = ["# The public API", "",
           "Written by `docs/make_api.py` from each package's `__all__` and the docstrings; "
           "`tests/test_public_api.py` pins the lists and fails when this page is out of date. "
           "Everything else is internal and may change without notice.", ""]
  for pkg_name in PACKAGES:
    pkg = importlib.import_module(pkg_name)
    lines += [f"## `{pkg_name}`", "", first_line(pkg), ""]
    for name in pkg.__all__:
      obj = member(pkg, name)
      if isinstance(obj, types.ModuleType):
        if obj.__name__ in PACKAGES:
          lines.append(f"- `{name}` (package, below): {first_line(obj)}")
          continue
        lines.append(f"- `{name}` (module): {first_line(obj)}")
        for sub in module_names(obj):
          o = getattr(obj, sub)
          lines.append(f"  - `{name}.{sub}` ({kind(o)}): {first_line(o)}".rstrip(": "))
      else:
        lines.append(f"- `{name}` ({kind(obj)}): {first_line(obj)}".rstrip(": "))
    for mod in unnamed_modules(pkg):
      short = mod.__name__.rsplit(".", 1)[1]
      lines.append(f"- `{short}` (module; the package re-exports some of its names): "
                   f"{first_line(mod)}")
      for sub in module_names(mod):
        if sub not in pkg.__all__:
          o = getattr(mod, sub)
          lines.append(f"  - `{short}.{sub}` ({kind(o)}): {first_line(o)}".rstrip(": "))
    lines.append("")
  return "\n".join(lines).rstrip() + "\n"


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--check", action="store_true")
  args = p.parse_args()
  text = render()
  if args.check:
    with open(OUT, encoding="utf-8") as f:
      if f.read() != text:
        print("docs/api.md is out of date: run .venv/bin/python docs/make_api.py")
        return 1
    return 0
  with open(OUT, "w", encoding="utf-8") as f:
    f.write(text)
  print(f"wrote {OUT}")
  return 0


if __name__ == "__main__":
  sys.path.insert(0, ROOT)
  sys.exit(main())
