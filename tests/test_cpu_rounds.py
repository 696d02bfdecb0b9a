"""benchmarks/cpu_rounds.py: the CPU method's rounds, equal-work check, ratios and raw file."""

import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import cpu_rounds  # noqa: E402  pylint: disable=g-import-not-at-top


def test_ratio_summary_by_hand():
  # ratios 2, 4, 3, 5, 3 -> median 3, range 2-5, above 1 everywhere: holds
  r = cpu_rounds.ratio_summary([2.0, 4.0, 3.0, 5.0, 6.0], [1.0, 1.0, 1.0, 1.0, 2.0])
  assert r["ratios"] == [2.0, 4.0, 3.0, 5.0, 3.0]
  assert (r["median"], r["min"], r["max"], r["n"], r["holds"]) == (3.0, 2.0, 5.0, 5, True)
  # ratios 0.5, 2 -> the range crosses 1: does not hold
  assert not cpu_rounds.ratio_summary([1.0, 2.0], [2.0, 1.0])["holds"]
  assert cpu_rounds.ratio_summary([1.0, 1.0], [2.0, 2.0])["holds"]   # 0.5 both: B faster
  with pytest.raises(ValueError, match="same non-zero number"):
    cpu_rounds.ratio_summary([1.0], [1.0, 2.0])


def _side(seconds, tokens):
  calls = []

  def fn():
    calls.append(1)
    return {"seconds": seconds[len(calls) - 1], "tokens": tokens}
  return fn, calls


def test_rounds_alternate_and_write_one_raw_file(tmp_path):
  a, calls_a = _side([1.0, 1.0, 2.0, 1.0, 1.0], 100)
  b, calls_b = _side([3.0, 2.0, 8.0, 4.0, 5.0], 100)
  out = tmp_path / "fig.jsonl"
  s = cpu_rounds.run_rounds("fig", [("a", a), ("b", b)], rounds=5, out=str(out),
                            command="cmd", work_keys=("tokens",), log=lambda _: None)
  assert len(calls_a) == len(calls_b) == 5
  lines = [json.loads(l) for l in out.read_text().splitlines()]
  assert [l["kind"] for l in lines] == ["round"] * 5 + ["summary"]
  assert [l["order"] for l in lines[:5]] == [["a", "b"], ["b", "a"]] * 2 + [["a", "b"]]
  for l in lines:   # provenance on every line
    assert {"figure", "commit", "date", "machine", "versions", "command"} <= set(l)
    assert l["command"] == "cmd"
  for l in lines[:5]:
    for side in ("a", "b"):
      assert len(l["sides"][side]["load_before"]) == 3 and len(l["sides"][side]["load_after"]) == 3
  # per-round b / a: 3, 2, 4, 4, 5 -> median 4, range 2-5
  assert (s["ratio"]["median"], s["ratio"]["min"], s["ratio"]["max"]) == (4.0, 2.0, 5.0)
  assert s["sides"]["a"]["median"] == 1.0 and s["sides"]["b"]["max"] == 8.0
  assert s["work"] == {"tokens": 100} and lines[-1] == json.loads(json.dumps(s))


def test_unequal_work_and_too_few_rounds_are_refused(tmp_path):
  a, _ = _side([1.0] * 5, 100)
  b, _ = _side([1.0] * 5, 99)
  with pytest.raises(AssertionError, match=r"round 0: unequal work .*'tokens': \(100, 99\)"):
    cpu_rounds.run_rounds("fig", [("a", a), ("b", b)], rounds=5, out=str(tmp_path / "x.jsonl"),
                          work_keys=("tokens",), log=lambda _: None)
  lines = [json.loads(l) for l in (tmp_path / "x.jsonl").read_text().splitlines()]
  assert [l["kind"] for l in lines] == ["round", "dropped"]   # the evidence is kept
  assert lines[1]["work"] == {"a": {"tokens": 100}, "b": {"tokens": 99}}
  with pytest.raises(ValueError, match="at least 5"):
    cpu_rounds.run_rounds("fig", [("a", a), ("b", b)], rounds=4, out=str(tmp_path / "y.jsonl"))


def test_commit_names_changes_and_says_unknown_without_git(tmp_path, monkeypatch):
  import subprocess  # pylint: disable=g-import-not-at-top
  repo = tmp_path / "repo"
  repo.mkdir()
  git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
  subprocess.run(git[:3] + ["init", "-q"], check=True)
  (repo / "f.txt").write_text("a\n")
  subprocess.run(git + ["add", "f.txt"], check=True)
  subprocess.run(git + ["commit", "-q", "-m", "one"], check=True)
  head = subprocess.run(git[:3] + ["rev-parse", "--short=12", "HEAD"], check=True,
                        capture_output=True, text=True).stdout.strip()
  assert cpu_rounds.commit(str(repo)) == head
  (repo / "f.txt").write_text("b\n")                  # a tracked file changed
  assert cpu_rounds.commit(str(repo)) == head + "+changes"
  assert cpu_rounds.commit(str(tmp_path / "not_a_repo")) == "unknown"

  def no_git(*args, **kwargs):
    raise FileNotFoundError("git")
  monkeypatch.setattr(cpu_rounds.subprocess, "run", no_git)
  assert cpu_rounds.commit(str(repo)) == "unknown"
