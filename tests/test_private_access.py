"""No module reaches into another module's underscored names, and no launcher or benchmark
imports a launcher.

The AST of every module of streampro_jax/, launch/ and benchmarks/ is walked; a finding is
  - `from m import _x` (an underscored name of another module), unless `_x` is a module of the
    package m and the importing file is inside m (an underscored module is private to its
    package: `from streampro_jax import _checks` in streampro_jax/losses.py);
  - `x._y` where x is anything but `self` / `cls` / a name this module defines at its top level:
    an imported module or object (`video._open`), a local holding another module's object
    (`s._header` on a sampler), or a chain through attributes (`self.sampler._prefix`), which
    covers objects of classes defined in other modules and third-party internals (a jitted
    function's `_cache_size`);
dunder names (`__wrapped__`, `__name__`) are public. There are no exceptions.
"""

import ast
import os

import pytest

from helpers import source_files  # pylint: disable=g-bad-import-order

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCANNED = ("streampro_jax", "launch", "benchmarks")


def _modules():
  return source_files.python_files(*SCANNED)


def _private(name: str) -> bool:
  return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _top_level_names(tree: ast.Module) -> set[str]:
  """Names the module itself defines at top level (functions, classes, assignments)."""
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      names.add(node.name)
  for node in tree.body:
    targets = []
    if isinstance(node, ast.Assign):
      targets = node.targets
    elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
      targets = [node.target]
    for t in targets:
      for n in ast.walk(t):
        if isinstance(n, ast.Name):
          names.add(n.id)
  return names


def _package_module(path: str, package: str | None, name: str) -> bool:
  """`name` is a module of `package` and the file at `path` lies inside that package."""
  if not package:
    return False
  folder = os.path.join(ROOT, *package.split("."))
  inside = os.path.abspath(os.path.join(ROOT, path)).startswith(folder + os.sep)
  return inside and (os.path.isfile(os.path.join(folder, name + ".py"))
                     or os.path.isdir(os.path.join(folder, name)))


def private_accesses(path: str) -> list[str]:
  """The findings of one file, as 'path:line: what'."""
  with open(os.path.join(ROOT, path), encoding="utf-8") as f:
    tree = ast.parse(f.read(), filename=path)
  own = _top_level_names(tree)
  out = []
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom):
      for alias in node.names:
        if _private(alias.name) and not _package_module(path, node.module, alias.name):
          out.append(f"{path}:{node.lineno}: from {node.module} import {alias.name}")
    elif isinstance(node, ast.Attribute) and _private(node.attr):
      base = node.value
      if isinstance(base, ast.Name) and (base.id in ("self", "cls") or base.id in own):
        continue
      out.append(f"{path}:{node.lineno}: {ast.unparse(node)}")
  return out


def _imports(path: str) -> tuple[set[str], list[str]]:
  """(dotted names of the modules a file imports, lazy imports included; the source of every
  call that loads a file by its path: importlib's spec_from_file_location, runpy.run_path)."""
  with open(os.path.join(ROOT, path), encoding="utf-8") as f:
    tree = ast.parse(f.read(), filename=path)
  modules, loads = set(), []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      modules.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      modules.add(node.module)
      modules.update(f"{node.module}.{a.name}" for a in node.names)
    elif (isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name))
          and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
              "spec_from_file_location", "run_path", "SourceFileLoader")):
      loads.append(ast.unparse(node))
  return modules, loads


def test_no_module_touches_another_modules_private_names():
  found = [f for path in _modules() for f in private_accesses(path)]
  assert not found, "\n".join(found)


def test_no_launcher_or_benchmark_imports_a_launcher():
  """A launcher is a program of launch/ (its underscored modules are the launchers' flag-free
  command-line helpers, not programs); code two launchers share lives in the library."""
  launchers = {os.path.splitext(n)[0] for n in os.listdir(os.path.join(ROOT, "launch"))
               if n.endswith(".py") and not n.startswith("_")}
  found = []
  for path in _modules():
    if not path.startswith(("launch" + os.sep, "benchmarks" + os.sep)):
      continue
    modules, loads = _imports(path)
    for mod in modules:
      parts = mod.split(".")
      if (parts[0] == "launch" and parts[-1] in launchers) or (
          path.startswith("launch") and parts[0] in launchers):
        found.append(f"{path}: imports {mod}")
    found += [f"{path}: loads {call}" for call in loads if "launch" in call]
  assert not found, "\n".join(found)


@pytest.mark.parametrize("source,finding", [
    ("from streampro_jax.data import video\nvideo._open('x')\n", "video._open"),
    ("from streampro_jax.sampling import _x\n", "import _x"),
    ("def f(s):\n  return s._header\n", "s._header"),
    ("class A:\n  def f(self):\n    return self.sampler._prefix\n", "self.sampler._prefix"),
])
def test_the_walker_finds_each_kind(tmp_path, monkeypatch, source, finding):
  path = tmp_path / "m.py"
  path.write_text(source)
  monkeypatch.setattr(os.path, "join", lambda *a: str(path) if a[-1] == "m.py" else
                      os.path.sep.join(a))
  found = private_accesses("m.py")
  assert len(found) == 1 and finding in found[0], found
  clean = "_LOCAL = 1\nclass B:\n  def g(self):\n    return self._y, _LOCAL, B._z, self.__dict__\n"
  path.write_text(clean)
  assert not private_accesses("m.py")
