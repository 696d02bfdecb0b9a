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
