"""Peak memory of importing a large Streamo raw JSON array (bounded-memory check).

Writes N synthetic Streamo raw entries (the structure of maifoundations/Streamo
dataset/example/raw_data.json) as one JSON array, then converts it to annotation JSONL in a
fresh child process and reports:
  * the child's peak RSS (resource.getrusage ru_maxrss) minus its RSS after imports, and
  * with --tracemalloc, the peak of Python allocations during the import;
and, for comparison, the peak RSS of json.load of the same file (what a naive importer needs).

  .venv/bin/python benchmarks/import_memory.py --records 200000 [--tracemalloc] [--naive]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

_CHILD = r"""
import json, resource, sys, time, tracemalloc
from streampro_jax.data import importers as im
mode, src, dst, trace = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
def rss_mb():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
base = rss_mb()
if trace:
  tracemalloc.start()
t = time.time()
if mode == "import":
  stats = im.import_to_jsonl("streamo_raw", src, dst, show_progress=False)
  n = stats.written
else:
  with open(src, encoding="utf-8") as f:
    n = len(json.load(f))
secs = time.time() - t
peak_py = tracemalloc.get_traced_memory()[1] / 2**20 if trace else None
print(json.dumps({"mode": mode, "records": n, "seconds": secs, "rss_after_imports_mb": base,
                  "peak_rss_mb": rss_mb(), "tracemalloc_peak_mb": peak_py}))
"""


def write_synthetic(path: str, n: int) -> None:
  with open(path, "w", encoding="utf-8") as f:
    f.write("[\n")
    for i in range(n):
      e = {"video_name": f"v{i}.mp4", "video_path": f"videos/v{i}.mp4",
           "task_type": ("QA", "Narration", "Event_Grounding")[i % 3], "source": "synthetic",
           "question": [{"content": f"What happens in clip {i}?", "time": str(i % 20)}],
           "response": [{"content": f"Something happens ({i}).", "st_time": i % 20 + 2,
                         "end_time": i % 20 + 5, "time": ""},
                        {"content": "Then it ends.", "st_time": "", "end_time": "",
                         "time": i % 20 + 9}]}
      f.write(("," if i else "") + json.dumps(e, indent=2) + "\n")
    f.write("]\n")


def run_child(mode: str, src: str, dst: str, trace: bool) -> dict:
  out = subprocess.run([sys.executable, "-c", _CHILD, mode, src, dst, "1" if trace else "0"],
                       capture_output=True, text=True, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--records", type=int, default=200_000)
  ap.add_argument("--tracemalloc", action="store_true")
  ap.add_argument("--naive", action="store_true", help="also measure json.load of the file")
  ap.add_argument("--workdir", default=None)
  args = ap.parse_args()
  with tempfile.TemporaryDirectory(dir=args.workdir) as d:
    src = os.path.join(d, "streamo_raw.json")
    t = time.time()
    write_synthetic(src, args.records)
    size_mb = os.path.getsize(src) / 2**20
    print(f"wrote {args.records} entries, {size_mb:.1f} MiB in {time.time() - t:.1f} s")
    res = run_child("import", src, os.path.join(d, "out.jsonl"), args.tracemalloc)
    res["file_mib"] = size_mb
    res["rss_growth_mb"] = res["peak_rss_mb"] - res["rss_after_imports_mb"]
    print(json.dumps(res))
    if args.naive:
      naive = run_child("json.load", src, "", False)
      naive["rss_growth_mb"] = naive["peak_rss_mb"] - naive["rss_after_imports_mb"]
      print(json.dumps(naive))


if __name__ == "__main__":
  main()
