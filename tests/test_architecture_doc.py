"""docs/architecture.md's layer table matches the code: every module it names exists in its
row's folder, and every module of the package (and every launcher) is named in some row."""

import os
import re

from helpers import source_files  # pylint: disable=g-bad-import-order

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "architecture.md")


def layer_rows(text: str) -> list[tuple[str, str, list[str]]]:
  """(layer, folder, module names) of each row of the table headed | layer | folder | modules |."""
  lines = text.splitlines()
  start = next(i for i, line in enumerate(lines)
               if line.replace(" ", "").startswith("|layer|folder|modules|"))
  rows = []
  for line in lines[start + 2:]:
    if not line.startswith("|"):
      break
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    folder = re.findall(r"`([^`]+)`", cells[1])
    assert len(folder) == 1, f"docs/architecture.md: row {cells[0]!r} names no single folder"
    rows.append((cells[0], folder[0], re.findall(r"`([^`]+)`", cells[2])))
  return rows


def _path(folder: str, name: str) -> str:
  name = name[:-3] if name.endswith(".py") else name
  return os.path.join(folder.rstrip("/"), name + ".py")


def _package_modules() -> set[str]:
  return {p for p in source_files.python_files("streampro_jax", "launch")
          if os.path.basename(p) != "__init__.py"}


def test_every_named_module_exists_and_every_module_is_named():
  with open(DOC, encoding="utf-8") as f:
    rows = layer_rows(f.read())
  named = {}
  for layer, folder, modules in rows:
    assert modules, f"docs/architecture.md: row {layer!r} names no module"
    for m in modules:
      path = _path(folder, m)
      assert os.path.isfile(os.path.join(ROOT, path)), (
          f"docs/architecture.md: row {layer!r} names {m!r}, but {path} does not exist")
      named[path] = layer
  missing = sorted(_package_modules() - set(named))
  assert not missing, f"modules missing from docs/architecture.md's layer table: {missing}"


def test_the_table_reader_sees_a_missing_module():
  text = ("| layer | folder | modules | what |\n|---|---|---|---|\n"
          "| base | `streampro_jax/` | `spans.py`, `no_such_module.py` | x |\n")
  (layer, folder, modules), = layer_rows(text)
  assert (layer, folder, modules) == ("base", "streampro_jax/", ["spans.py", "no_such_module.py"])
  assert not os.path.isfile(os.path.join(ROOT, _path(folder, modules[1])))
