"""The repository's Python sources, for the tests that read code as text or AST
(test_private_access, test_module_all, test_architecture_doc)."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def python_files(*tops: str) -> list[str]:
  """Repository-relative paths of every .py file under the folders `tops` (relative to the
  repository root), __pycache__ aside, sorted within each folder walk."""
  out = []
  for top in tops:
    for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, top)):
      dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
      out.extend(os.path.relpath(os.path.join(dirpath, n), ROOT)
                 for n in sorted(filenames) if n.endswith(".py"))
  return out
