"""README's two set-up commands are the ones CI and users run."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _readme_commands():
  text = (ROOT / "README.md").read_text()
  block = re.search(r"```bash\n(.*?)```", text, re.S)
  assert block, "README.md must open with a fenced bash block"
  assert text.index("```bash") < text.index("\n\n", text.index("# streampro_jax")) + 3
  return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_has_exactly_two_commands():
  commands = _readme_commands()
  assert len(commands) == 2, commands
  assert "launch/demo.py" in commands[0]
  assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command_verbatim():
  ci = (ROOT / ".ci" / "run").read_text().splitlines()
  assert _readme_commands()[1] in ci


def test_readme_scripts_exist():
  for command in _readme_commands():
    for path in re.findall(r"(launch/\S+\.(?:py|sh))", command):
      assert (ROOT / path).exists(), path


# ---- every command README.md and docs/*.md show parses its flags --------------------------------
#
# Each shown `python launch/X.py ...` / `benchmarks/X.py ...` is parsed by the parser the script
# itself builds: its absl flag definitions (flags.DEFINE_*, config_flags.DEFINE_config_file, and
# launch/_common.py's flags for the scripts that adopt them) are re-declared on a fresh FlagValues
# with the real absl functions, and its argparse `add_argument` calls on a real ArgumentParser.
# The definitions are read from the script's source (not imported), so the launchers' heavy
# imports and their shared global flag registry stay out of the test. `--config` loads the real
# config file and applies the shown `--config.x=y` overrides, so a misspelled config key fails too.

import argparse  # noqa: E402
import ast  # noqa: E402
import importlib  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402

import pytest  # noqa: E402

DOCS = ("README.md", "BUILD_NOTES.md", *sorted(
    str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")))
_SCRIPT = re.compile(r"((?:launch|benchmarks)/\w+\.py)")
_PLACEHOLDER = "PLACEHOLDER"
_ARGPARSE_TYPES = {"int": int, "float": float, "str": str}


def _code_spans(text):
  """Fenced blocks and inline code spans (which may wrap lines) of a markdown text."""
  fenced = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
  for m in fenced.finditer(text):
    yield m.group(1)
  for m in re.finditer(r"`([^`]+)`", fenced.sub("", text)):
    yield m.group(1)


def _commands_in(text):
  """[(script, argv)] of every command a markdown text shows with at least one argument."""
  out = []
  for span in _code_spans(text):
    span = re.sub(r"\\\n", " ", span)
    span = re.sub(r"<[^>\n]*>", _PLACEHOLDER, span)     # <new dir>, <seed_0>, <train workdir>
    for line in span.splitlines():
      for m in _SCRIPT.finditer(line):
        rest = re.split(r"&&|;|\s#|\|\s|\"", line[m.end():])[0]
        rest = rest.replace("[", " ").replace("]", " ")   # [--seed=N]: an optional flag
        try:
          argv = shlex.split(rest)
        except ValueError:
          argv = rest.split()
        argv = [a for a in argv if a not in ("...", "|")]
        # A command shows flags right after the script; prose after a script name does not count.
        if argv and argv[0].startswith("-") and (ROOT / m.group(1)).exists():
          out.append((m.group(1), argv))
  return out


def _all_commands():
  found = []
  for doc in DOCS:
    for script, argv in _commands_in((ROOT / doc).read_text()):
      found.append(pytest.param(script, argv, id=f"{doc}:{script}:{' '.join(argv)[:60]}"))
  return found


def _literal(node, resolve):
  try:
    return ast.literal_eval(node)
  except ValueError:
    return resolve(node)


def _resolver(tree):
  """Resolves module-level constants and `module.NAME` references of a script's source."""
  consts, modules = {}, {}
  for node in tree.body:
    if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(
        node.targets[0], ast.Name):
      try:
        consts[node.targets[0].id] = ast.literal_eval(node.value)
      except ValueError:
        pass
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(
        "streampro_jax"):
      for alias in node.names:
        modules[alias.asname or alias.name] = f"{node.module}.{alias.name}"

  def resolve(node):
    if isinstance(node, ast.Name) and node.id in consts:
      return consts[node.id]
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and (
        node.value.id in modules):
      return getattr(importlib.import_module(modules[node.value.id]), node.attr)
    return None
  return resolve


def _calls(tree, names):
  for node in ast.walk(tree):
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and (
        node.func.attr in names or node.func.attr.startswith(tuple(
            n for n in names if n.endswith("_")))):
      yield node


def _absl_parse(path, argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  fv = flags.FlagValues()
  full_argv = []   # filled below; config_flags reads it lazily to define the override flags
  # The script's own definitions and those of the sibling launch modules it imports (e.g.
  # _common, or evaluate's model flags that stream.py and serve.py reuse), transitively.
  sources, todo = [], [path]
  while todo:
    source = todo.pop()
    if source in sources:
      continue
    sources.append(source)
    for name in re.findall(r"^import (\w+)", source.read_text(), re.M):
      if (path.parent / f"{name}.py").exists():
        todo.append(path.parent / f"{name}.py")
  for source in sources:
    tree = ast.parse(source.read_text())
    resolve = _resolver(tree)
    for call in _calls(tree, ("DEFINE_",)):
      kind = call.func.attr
      args = [_literal(a, resolve) for a in call.args]
      kwargs = {k.arg: _literal(k.value, resolve) for k in call.keywords if k.arg}
      name = args[0]
      if kind == "DEFINE_config_file":
        config_flags.DEFINE_config_file(name, flag_values=fv, sys_argv=full_argv,
                                        lock_config=kwargs.get("lock_config", True))
      elif kind == "DEFINE_enum":
        enum_values = args[2] if len(args) > 2 else kwargs["enum_values"]
        flags.DEFINE_enum(name, args[1], list(enum_values), "", flag_values=fv)
      else:
        define = getattr(flags, kind)
        default = args[1] if len(args) > 1 else kwargs.get("default")
        define(name, default, "", flag_values=fv)
  parsed = []
  for arg in argv:
    if arg.startswith("--") and "=" in arg:
      name, value = arg[2:].split("=", 1)
      key = name[2:] if name.startswith("no") and name[2:] in fv else name
      if key.startswith("config."):
        if _PLACEHOLDER in value or value in ("N", "..."):
          value = "0"
        parsed.append(f"--{name}={value}")
        continue
      assert key in fv, f"{path.name}: unknown flag --{name}"
      if _PLACEHOLDER in value or value == "N":
        default = fv[key].default
        value = ",".join(default) if isinstance(default, list) else str(
            default if default is not None else 1)
      for alternative in value.split("|") if key not in ("judge",) else [value]:
        parsed.append(f"--{name}={alternative}")
    elif arg.startswith("--config=") or (parsed and parsed[-1] == "--config"):
      parsed.append(arg.split(":", 1)[0] if not arg.startswith("--") else arg.split(":", 1)[0])
    else:
      parsed.append(arg)
  full_argv[:] = ["prog", *parsed]
  # Raises flags.Error on an unknown flag or a bad value, and (from ml_collections) on a
  # `--config.x=y` whose key the config file does not have.
  fv(full_argv)


def _argparse_parse(path, argv):
  tree = ast.parse(path.read_text())
  resolve = _resolver(tree)
  parser = argparse.ArgumentParser(prog=path.name, exit_on_error=False)
  for call in _calls(tree, ("add_argument",)):
    args = [_literal(a, resolve) for a in call.args]
    kwargs = {}
    for k in call.keywords:
      if k.arg == "type" and isinstance(k.value, ast.Name):
        kwargs["type"] = _ARGPARSE_TYPES.get(k.value.id, str)
      elif k.arg in ("action", "choices", "nargs", "default", "dest", "required"):
        kwargs[k.arg] = _literal(k.value, resolve)
    parser.add_argument(*args, **kwargs)
  filled = []
  for arg in argv:
    if _PLACEHOLDER in arg or arg == "N":
      action = parser._option_string_actions.get(filled[-1]) if filled else None  # pylint: disable=protected-access
      arg = str(action.default if action and action.default is not None else 1)
    filled.append(arg)
  try:
    parser.parse_args(filled)
  except SystemExit as e:   # unknown arguments: argparse exits even with exit_on_error=False
    raise argparse.ArgumentError(None, f"{path.name}: cannot parse {filled}") from e


def _parse(script, argv):
  path = ROOT / script
  if "argparse" in path.read_text():
    _argparse_parse(path, argv)
  else:
    _absl_parse(path, argv)


def test_docs_show_commands():
  scripts = {script for doc in DOCS for script, _ in _commands_in((ROOT / doc).read_text())}
  assert {"launch/demo.py", "launch/train_sft.py", "launch/evaluate.py",
          "benchmarks/rollout_decode.py"} <= scripts, scripts


@pytest.mark.parametrize("script,argv", _all_commands())
def test_shown_command_parses_its_flags(script, argv):
  _parse(script, argv)


def test_a_correct_config_override_parses():
  _parse("launch/train_sft.py", ["--config", "configs/tiny_synthetic.py", "--workdir", "w",
                                 "--config.optim.lr=1e-3", "--config.loss.kind=ce"])


@pytest.mark.parametrize("script,argv", [
    ("launch/demo.py", ["--workdir=w", "--bugdet=smoke"]),               # misspelled flag
    ("launch/demo.py", ["--workdir=w", "--budget=huge"]),                # not an enum value
    ("launch/evaluate.py", ["--benchmark=streambench"]),
    ("launch/train_sft.py", ["--config", "configs/tiny_synthetic.py", "--workdir", "w",
                             "--config.optim.lrr=1e-3"]),                # misspelled config key
    ("benchmarks/train_step.py", ["--step", "3", "--stepz", "2"]),       # argparse script
    ("benchmarks/rollout.py", ["--rows", "eight"]),                       # wrong type
])
def test_a_misspelled_command_fails(script, argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  with pytest.raises((AssertionError, AttributeError, KeyError, ValueError, flags.Error,
                      argparse.ArgumentError)):
    _parse(script, argv)


# ---- the documents' links resolve, and nothing points outside the repository --------------------

def _anchors(page):
  text = page.read_text()
  ids = set(re.findall(r'<a id="([^"]+)"', text))
  for heading in re.findall(r"^#+ (.*)$", text, re.M):
    ids.add(re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-"))
  return ids


def test_document_links_resolve():
  broken = []
  for doc in DOCS:
    page = ROOT / doc
    for target, anchor in re.findall(r"\]\(([^)#\s]*)(#[^)\s]*)?\)", page.read_text()):
      if target.startswith(("http://", "https://")):
        continue
      path = (page.parent / target).resolve() if target else page
      if not path.exists():
        broken.append(f"{doc}: {target}")
      elif anchor and path.suffix == ".md" and anchor[1:] not in _anchors(path):
        broken.append(f"{doc}: {target}{anchor}")
  assert not broken, broken


def _tracked(suffix):
  files = subprocess.run(["git", "ls-files", f"*{suffix}"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.split()
  return [name for name in files if (ROOT / name).is_file()]


def test_code_cites_documentation_that_exists():
  """Every `docs/<page>.md[#anchor]` and `docs/method.md section N` a .py file names resolves."""
  sections = set(re.findall(r"^## (\d+)\. ", (ROOT / "docs/method.md").read_text(), re.M))
  broken = []
  for name in _tracked(".py"):
    text = (ROOT / name).read_text()
    if name != "tests/test_readme.py" and "BUILD_NOTES" in text:
      broken.append(f"{name}: cites BUILD_NOTES (a guide now; cite the docs/ page)")
    for page, anchor in re.findall(r"\b(docs/\w+\.md)(#[\w-]+)?", text):
      if not (ROOT / page).exists():
        broken.append(f"{name}: {page}")
      elif anchor and anchor[1:] not in _anchors(ROOT / page):
        broken.append(f"{name}: {page}{anchor}")
    for number in re.findall(r"method\.md\s+(?:section|§)\s*(\d+)", text):
      if number not in sections:
        broken.append(f"{name}: method.md section {number}")
  assert not broken, broken


def test_readme_reaches_the_key_sections_in_two_clicks():
  readme = (ROOT / "README.md").read_text()
  for link in ("docs/method.md#cb-stream-weights", "docs/method.md#turn-level-f1",
               "docs/architecture.md#mesh-rules"):
    assert f"({link})" in readme, link


def test_no_tracked_file_refers_outside_the_repository():
  outside = ("../" + "shared", "/" + "work/", "SPEC" + ".md", "DESIGN" + ".md")
  files = subprocess.run(["git", "ls-files"], cwd=ROOT, check=True, capture_output=True,
                         text=True).stdout.split()
  hits = []
  for name in files:
    path = ROOT / name
    if path.suffix in (".png", ".jpg", ".gz", ".npz") or not path.is_file():
      continue
    text = path.read_text(errors="ignore")
    hits += [f"{name}: {s}" for s in outside if s in text]
  assert not hits, hits
