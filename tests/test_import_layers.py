"""The import-linter contracts of .importlinter (the package imports one way: bench > train >
math > data > models > base, no cycles) hold, and a wrong-way import breaks them."""

import os
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("importlinter", reason="import-linter is in the 'test' extra (setup.cfg)")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# lint-imports, run by the interpreter that runs the tests (the console script's own code).
LINT = [sys.executable, "-c",
        "import sys; from importlinter.cli import lint_imports_command; "
        "sys.exit(lint_imports_command())", "--no-cache"]


def _lint(root):
  paths = [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))
  return subprocess.run(LINT, cwd=root, env=env, capture_output=True, text=True, timeout=300,
                        check=False)


def _copy(tmp_path):
  root = str(tmp_path / "repo")
  shutil.copytree(os.path.join(ROOT, "streampro_jax"), os.path.join(root, "streampro_jax"),
                  ignore=shutil.ignore_patterns("__pycache__"))
  shutil.copy(os.path.join(ROOT, ".importlinter"), root)
  return root


def test_contracts_kept():
  out = _lint(ROOT)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
  assert "0 broken" in out.stdout


@pytest.mark.parametrize("module,line,contract", [
    # The math layer reaching up into train (what grpo.py did with function-level imports).
    ("grpo.py", "from streampro_jax.train import step as _step", "Layers"),
    # The sampler reaching up into grpo (the layer above it) for token_logps.
    ("sampling/sampler.py", "from streampro_jax import grpo as _grpo", "Layers"),
    # The sampler's message loop reaching up into the sampler that drives it.
    ("sampling/decode.py", "from streampro_jax.sampling import sampler as _s", "Sampling:"),
    # Half of the old chat_format <-> tokenizer circle (both sit on prompts.py's tokens now).
    ("data/tokenizer.py", "from streampro_jax.data import chat_format as _cf", "Data:"),
    # The package's sub-packages import each other in one direction only.
    ("models/layers.py", "from streampro_jax.data import schema as _schema", "No import cycles"),
])
def test_a_wrong_way_import_breaks_a_contract(tmp_path, module, line, contract):
  root = _copy(tmp_path)
  path = os.path.join(root, "streampro_jax", module)
  with open(path, encoding="utf-8") as f:
    text = f.read()
  with open(path, "w", encoding="utf-8") as f:
    f.write(text + f"\n{line}  # noqa\n")
  out = _lint(root)
  assert out.returncode != 0, out.stdout[-3000:]
  summary = out.stdout.split("Contracts\n---------")[1].split("\nContracts: ")[0]
  summary = " ".join(summary.split())  # Contract names wrap over lines.
  broken = [c.split(" KEPT ")[-1] for c in summary.split(" BROKEN")[:-1]]
  assert any(contract in name for name in broken), out.stdout[-3000:]
