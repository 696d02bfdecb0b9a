"""benchmarks/figures.py: the docs' figure blocks are what the raw result files say."""

import os
import shutil
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import figures  # noqa: E402  pylint: disable=g-import-not-at-top


def test_every_figure_block_matches_its_raw_files():
  assert figures.stale_blocks() == [], "run: .venv/bin/python benchmarks/figures.py"


@pytest.mark.parametrize("name", sorted(figures.BLOCKS))
def test_a_planted_wrong_digit_is_caught(tmp_path, name):
  for docs, _ in figures.BLOCKS.values():
    for other in docs:
      (tmp_path / os.path.dirname(other) or tmp_path).mkdir(parents=True, exist_ok=True)
      shutil.copy(os.path.join(ROOT, other), tmp_path / other)
  docs, fn = figures.BLOCKS[name]
  doc = docs[-1]
  text = (tmp_path / doc).read_text()
  body = fn()
  digit = next(i for i, ch in enumerate(body) if ch.isdigit())
  wrong = body[:digit] + str((int(body[digit]) + 1) % 10) + body[digit + 1:]
  assert body in text
  (tmp_path / doc).write_text(text.replace(body, wrong))
  assert figures.stale_blocks(str(tmp_path)) == [f"{doc}: figures:{name}"]
  assert figures.write_all(str(tmp_path)) == [doc]          # the writer puts it right
  assert figures.stale_blocks(str(tmp_path)) == []
