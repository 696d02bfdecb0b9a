"""The command line of every launcher: each mistake is one line naming the flag, exit code 2.

``run(main)`` is ``app.run(main)`` with:
  * flag errors (an unknown flag, a bad value, a missing required flag, a ``--config.x.y=v``
    override that ml_collections cannot apply) printed as one line ``error: ...`` with exit code
    2 instead of absl's usage text or ml_collections' traceback;
  * ``app.UsageError`` raised by ``main`` (the launchers' own input checks) printed the same way;
  * ``--help`` / ``--helpshort`` / ``--helpfull`` exiting 0 (absl exits 1 after printing help);
  * HF_HUB_OFFLINE and TRANSFORMERS_OFFLINE defaulting to 1 (nothing is fetched from a hub).

Defines no flags: every launcher imports it (launch/_common.py for the trainers).
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

from absl import app
from absl import flags

EXIT_USAGE = 2
HELP_FLAGS = ("--help", "-help", "-?", "--helpshort", "-helpshort", "--helpfull", "-helpfull")


def fail(message: str) -> NoReturn:
  """Prints ``error: <message>`` on stderr and exits with status 2 (a usage error)."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(EXIT_USAGE)


def _config_overrides(argv: list[str]) -> tuple[str | None, list[str]]:
  """(the --config value, the dotted paths of the --config.<path>=... overrides) in `argv`."""
  path, overrides = None, []
  for i, arg in enumerate(argv):
    name = arg.split("=", 1)[0].lstrip("-")
    if name == "config":
      path = arg.split("=", 1)[1] if "=" in arg else (argv[i + 1] if i + 1 < len(argv) else None)
    elif name.startswith(("config.", "noconfig.")):
      overrides.append(name.split(".", 1)[1])
  return path, overrides


def _override_problem(argv: list[str]) -> str | None:
  """One line naming the first --config.<path> override that the config file lacks (a section
  on the way, or the key itself; ml_collections raises a bare KeyError / AttributeError for
  it); None when each exists."""
  path, overrides = _config_overrides(argv)
  if not path or not overrides or "config" not in flags.FLAGS:
    return None
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  try:
    config = config_flags.ConfigFileFlagParser(name="config", lock_config=False).parse(path)
  except Exception:  # pylint: disable=broad-except
    return None
  for override in overrides:
    node, parts = config, override.split(".")
    for depth, part in enumerate(parts):
      keys = list(node.keys()) if hasattr(node, "keys") else []
      if part not in keys:
        where = "config" + "".join(f".{p}" for p in parts[:depth])
        what = "key" if depth == len(parts) - 1 else "section"
        return (f"--config.{override}: {where} has no {what} {part!r} (its keys: "
                f"{', '.join(sorted(map(str, keys)))})")
      node = node[part]
  return None


def parse_flags(argv: list[str]) -> list[str]:
  """app.run's flags_parser: absl's parse, each error one line (exit 2), help exits 0."""
  asked_help = any(arg.split("=", 1)[0] in HELP_FLAGS for arg in argv[1:])
  try:
    return flags.FLAGS(argv)
  except SystemExit as err:
    if asked_help and err.code == 1:
      sys.exit(0)
    raise
  except flags.Error as err:
    fail(f"{err} (--helpfull lists every flag)")
  except (KeyError, AttributeError, TypeError, ValueError) as err:   # a --config.x override
    problem = _override_problem(argv)
    fail(problem or f"the --config overrides could not be applied: {err!r}")


def run(main) -> None:
  """``app.run(main)`` with the command-line errors of this module's docstring."""
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

  def checked_main(argv):
    try:
      return main(argv)
    except app.UsageError as err:
      fail(str(err))

  app.run(checked_main, flags_parser=parse_flags)
