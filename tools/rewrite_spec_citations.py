"""Rewrites the docstrings' citations of the old out-of-repository SPEC to docs/method.md.

docs/method.md keeps SPEC's section numbers (1 trajectory, 2 SFT / CB-Stream, 3 GRPO, rewards and
judges, 4 StreamPro-F1, 5 peer benchmarks), so "SPEC section N" becomes "docs/method.md section N"
with the same meaning. "CONVENTIONS.md" (the shared interfaces) becomes docs/architecture.md.

Usage, from the repository root: `python3 tools/rewrite_spec_citations.py [--check]`. It rewrites
every tracked .py file in place and prints what it changed; with --check it changes nothing and
exits 1 when a citation is left to rewrite.
"""

import io
import pathlib
import re
import subprocess
import sys
import tokenize

RULES = (
    (re.compile(r"\bSPEC sections (\d) and (\d)"), r"docs/method.md sections \1 and \2"),
    (re.compile(r"\bSPEC section (\d)"), r"docs/method.md section \1"),
    (re.compile(r"\bSPEC's\b"), "docs/method.md's"),
    (re.compile(r"\bas SPEC\b"), "as docs/method.md"),
    (re.compile(r"\bSPEC (has|does)\b"), r"docs/method.md \1"),
    (re.compile(r"\bSPEC task\b"), "task of docs/method.md"),
    (re.compile(r"\bSPEC:"), "docs/method.md:"),
    (re.compile(r"\bCONVENTIONS batch keys\b"), "batch keys of docs/architecture.md"),
    (re.compile(r"\bCONVENTIONS\.md\b"), "docs/architecture.md"),
)
LEFT = re.compile(r"\bSPEC\b(?!_)|CONVENTIONS|\.\./shared|SPEC\.md|DESIGN\.md")


MAX_LINE = 100   # pyproject.toml's ruff line-length
SELF = "tools/rewrite_spec_citations.py"


def _prose_lines(text: str) -> set[int]:
  """1-based numbers of the lines that are comments or inside a multi-line string (docstrings)."""
  prose = set()
  for tok in tokenize.generate_tokens(io.StringIO(text).readline):
    if tok.type == tokenize.COMMENT and not tok.line[:tok.start[1]].strip():
      prose.add(tok.start[0])
    elif tok.type == tokenize.STRING and tok.string.lstrip("rbuRBU")[:3] in ('"""', "'''"):
      # Docstrings and other triple-quoted prose, the opening and closing lines included.
      prose.update(range(tok.start[0], tok.end[0] + 1))
  return prose


def _rewrap(text: str, changed: set[int]) -> str:
  """Carries the words of a rewritten prose line past MAX_LINE onto a continuation line.

  The overflow goes to the front of the next line when that line continues the same paragraph
  (same indentation and comment prefix, not a list item, not blank, not a closing quote);
  otherwise a new line with the same prefix is inserted. Only prose lines are touched.
  """
  lines = text.split("\n")
  prose = _prose_lines(text)
  todo = set(changed)
  i = 0
  while i < len(lines):
    line = lines[i]
    if (i + 1) not in todo or (i + 1) not in prose or len(line) <= MAX_LINE:
      i += 1
      continue
    banner = re.match(r"(.*\S) (-{3,})$", line)
    if banner and len(banner.group(1)) <= MAX_LINE:   # "# ---- title ----": shorten the rule
      rule = MAX_LINE - len(banner.group(1)) - 1
      lines[i] = banner.group(1) + (" " + "-" * rule if rule >= 3 else "")
      i += 1
      continue
    prefix = re.match(r"\s*(?:#\s?)?", line).group(0)
    # Never break inside a citation ("docs/method.md section 3").
    guarded = re.sub(r"(docs/method\.md) (sections?) (\d)|(Algorithm|App\.) (\w)",
                     lambda m: m.group(0).replace(" ", "\x00"), line)
    cut = guarded.rfind(" ", len(prefix) + 1, MAX_LINE + 1)
    if cut <= len(prefix):
      i += 1
      continue
    head, tail = line[:cut].rstrip(), line[cut + 1:]
    opening = re.match(r'\s*[rbuRBU]*("""|\'\'\')', line)
    if opening:   # the opening line of a docstring: its continuation is indented like it
      prefix = re.match(r"\s*", line).group(0)
    nxt = lines[i + 1] if i + 1 < len(lines) else ""
    nxt_prefix = re.match(r"\s*(?:#\s?)?", nxt).group(0)
    body = nxt[len(nxt_prefix):]
    single_line_docstring = opening and tail.rstrip().endswith(opening.group(1))
    joinable = (not single_line_docstring and (i + 2) in prose and body.strip()
                and nxt_prefix.strip() == prefix.strip() and len(nxt_prefix) >= len(prefix)
                and not re.match(r"([-*]|\d+[.)]|\w+:$|\"\"\"|\'\'\'|-{3,})", body))
    lines[i] = head
    if joinable:
      lines[i + 1] = nxt_prefix + tail + " " + body
    else:
      lines.insert(i + 1, prefix + tail)
      prose = {n + 1 if n > i + 1 else n for n in prose} | {i + 2}
      todo = {n + 1 if n > i + 1 else n for n in todo}
    todo.add(i + 2)
    i += 1
  return "\n".join(lines)


def rewrite(text: str) -> str:
  """The text with every citation rewritten and the lines it lengthened re-wrapped."""
  old = text.split("\n")
  for pattern, replacement in RULES:
    text = pattern.sub(replacement, text)
  changed = {n for n, (a, b) in enumerate(zip(old, text.split("\n")), 1) if a != b}
  return _rewrap(text, changed)


def main(argv) -> int:
  check = "--check" in argv
  files = subprocess.run(["git", "ls-files", "*.py"], check=True, capture_output=True,
                         text=True).stdout.split()
  left = 0
  for name in files:
    if name == SELF:
      continue
    path = pathlib.Path(name)
    old = path.read_text()
    new = rewrite(old)
    if new != old:
      if check:
        print(f"to rewrite: {name}")
        left += 1
      else:
        path.write_text(new)
        print(f"rewrote {name}")
    for i, line in enumerate(new.splitlines(), 1):
      if LEFT.search(line):
        print(f"left: {name}:{i}: {line.strip()}")
        left += 1
  return 1 if left else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
