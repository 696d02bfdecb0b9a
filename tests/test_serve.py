"""launch/serve.py: the live web page (HTTP API, and a real headless chromium through selenium).

One server (--checkpoint=random, --max_viewers=2, 127.0.0.1 on a portpicker port) for the module,
always shut down. The browser test needs Debian's chromium and chromium-driver
(launch/setup_browser.sh; .ci/run installs them) and skips without them.
"""

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import portpicker
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def _http(method, url, data=None, headers=None, timeout=30):
  req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
  try:
    with urllib.request.urlopen(req, timeout=timeout) as r:
      return r.status, json.loads(r.read() or b"{}")
  except urllib.error.HTTPError as e:
    return e.code, json.loads(e.read() or b"{}")


def _video(path, seconds=6, fps=4, size=32, seed=0):
  from streampro_jax.data import video
  rng = np.random.default_rng(seed)
  frames = np.zeros((seconds * fps, size, size, 3), np.uint8)
  for i in range(len(frames)):   # a bar sweeping right over a random colour
    frames[i] = rng.integers(0, 256, 3, dtype=np.uint8)
    frames[i, :, : (i * 3) % size] = 240
  video._encode_video(path, frames, fps=fps, codec="libvpx")   # webm: chromium plays it
  return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("serve")
  port = portpicker.pick_unused_port()
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  log = open(tmp / "server.log", "w", encoding="utf-8")   # pylint: disable=consider-using-with
  proc = subprocess.Popen(   # pylint: disable=consider-using-with
      [sys.executable, os.path.join(ROOT, "launch", "serve.py"), "--checkpoint=random",
       f"--port={port}", "--max_viewers=2", "--force_response_at_ask", "--max_text_tokens=4",
       "--unwatched_timeout_s=3"],
      stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(tmp))
  base = f"http://127.0.0.1:{port}"
  try:
    t0 = time.monotonic()
    for _ in range(240):   # bounded: up to 120 s for import, init and compilation
      if proc.poll() is not None:
        break
      try:
        code, health = _http("GET", base + "/healthz", timeout=2)
        if code == 200 and health["ready"]:
          break
      except (urllib.error.URLError, ConnectionError, OSError):
        pass
      time.sleep(0.5)
    else:
      pytest.fail("server not ready in 120 s")
    assert proc.poll() is None, (tmp / "server.log").read_text()[-3000:]
    yield {"base": base, "tmp": tmp, "ready_s": time.monotonic() - t0}
  finally:
    proc.terminate()
    try:
      proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()
    log.close()


def _events(base, sid, timeout=60):
  """The SSE events of a stream until its "done" (bounded by `timeout`)."""
  out = []
  with urllib.request.urlopen(f"{base}/api/sessions/{sid}/events", timeout=timeout) as r:
    for raw in r:
      line = raw.decode().strip()
      if line.startswith("data: "):
        out.append(json.loads(line[6:]))
        if out[-1]["kind"] == "done":
          break
  return out


@pytest.mark.slow
def test_two_viewers_stay_separate_and_a_third_is_told_busy(server):
  base = server["base"]
  body = open(_video(str(server["tmp"] / "a.webm"), seconds=4), "rb").read()
  ids = []
  for _ in range(2):
    code, j = _http("POST", base + "/api/sessions", data=body)
    assert code == 201, j
    ids.append(j["id"])
  code, j = _http("POST", base + "/api/sessions", data=body)
  assert code == 503 and "busy" in j["detail"]
  assert _http("POST", f"{base}/api/sessions/{ids[0]}/questions",
               data=json.dumps({"text": "first viewer asks"}).encode())[0] == 200
  assert _http("POST", f"{base}/api/sessions/{ids[1]}/questions",
               data=json.dumps({"text": "second viewer asks"}).encode())[0] == 200
  ev = [_events(base, sid) for sid in ids]
  for mine, theirs, e in (("first", "second", ev[0]), ("second", "first", ev[1])):
    turns = [x for x in e if x["kind"] == "turn"]
    assert [t["time"] for t in turns] == [1.0, 2.0, 3.0, 4.0]
    asked = [q for t in turns for q in t["questions"]]
    assert asked == [f"{mine} viewer asks"], asked
    assert not any(theirs in q for q in asked)
    (t_q,) = [t for t in turns if t["questions"]]
    assert t_q["decision"] == "response"
    assert e[-1]["kind"] == "done" and e[-1]["turns"] == 4
  assert _http("GET", base + "/api/sessions/nope/events")[0] == 404
  code, j = _http("POST", base + "/api/sessions", data=b"")
  assert code == 400 and j["detail"].startswith("no video was sent")


@pytest.mark.slow
def test_a_closed_page_frees_its_slot_and_errors_speak_plainly(server):
  """Issue 28: a closed tab kept its viewer slot (503 for a lone browser), errors showed API
  words or the server's temporary path with an errno, a too-long question failed mid-stream."""
  base = server["base"]
  body = open(_video(str(server["tmp"] / "long.webm"), seconds=40, fps=2), "rb").read()
  ids = [_http("POST", base + "/api/sessions", data=body)[1]["id"] for _ in range(2)]
  for sid in ids:   # each page opens its feed, reads a little, and is closed
    with urllib.request.urlopen(f"{base}/api/sessions/{sid}/events", timeout=30) as r:
      r.readline()
  code, j = _http("POST", f"{base}/api/sessions/{ids[0]}/questions",
                  data=json.dumps({"text": "how many boxes " * 700}).encode())
  assert code == 400 and "too long" in j["detail"], j
  assert _http("POST", base + "/api/sessions", data=body)[0] == 503   # both slots still held
  deadline = time.monotonic() + 30   # unwatched for 3 s: stopped and dropped
  while time.monotonic() < deadline and _http("GET", base + "/healthz")[1]["viewers"]:
    time.sleep(0.5)
  assert _http("GET", base + "/healthz")[1]["viewers"] == 0
  code, j = _http("POST", base + "/api/sessions", data=b"\x00not a video" * 64)
  assert code == 201, j
  (done,) = [e for e in _events(base, j["id"]) if e["kind"] == "done"]
  assert done["error"].startswith("the uploaded video could not be played: "), done
  assert "/tmp" not in done["error"] and "Errno" not in done["error"]


@pytest.mark.slow
@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                    reason="needs chromium and chromium-driver (bash launch/setup_browser.sh)")
def test_page_in_headless_chromium(server):
  """Load the page, upload a video, ask a question while it plays, see the answer on the
  timeline; two browser windows at once keep their own streams."""
  from selenium import webdriver
  from selenium.webdriver.chrome.service import Service
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support.ui import WebDriverWait
  os.environ.setdefault("SE_OFFLINE", "true")   # never let Selenium Manager download a driver
  video = _video(str(server["tmp"] / "b.webm"), seconds=6, seed=1)

  def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
              "--window-size=1000,900", "--autoplay-policy=no-user-gesture-required"):
      opts.add_argument(a)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)

  drivers = []
  try:
    for question in ("Where is the bar?", "What colour is it?"):
      d = browser()
      drivers.append(d)
      d.get(server["base"] + "/")
      assert "streampro_jax live" in d.title
      d.find_element(By.ID, "file").send_keys(video)
      d.find_element(By.ID, "start").click()
      WebDriverWait(d, 30).until(lambda d: d.find_element(By.ID, "question").is_enabled())
      d.find_element(By.ID, "question").send_keys(question)
      d.find_element(By.ID, "ask").click()
    sessions = [d.find_element(By.TAG_NAME, "body").get_attribute("data-session") for d in drivers]
    assert sessions[0] and sessions[1] and sessions[0] != sessions[1]
    for d in drivers:
      WebDriverWait(d, 60).until(
          lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-done") == "1")
    shot = os.environ.get("LIVE_SCREENSHOT")
    if shot:
      drivers[0].save_screenshot(shot)
    for d, mine, theirs in ((drivers[0], "Where is the bar?", "What colour is it?"),
                            (drivers[1], "What colour is it?", "Where is the bar?")):
      items = [li.text for li in d.find_elements(By.CSS_SELECTOR, "#timeline li")]
      questions = [t for t in items if "Q: " in t]
      answers = [t for t in items if "</Response>" in t]
      assert questions and mine in questions[0] and not any(theirs in t for t in items), items
      assert answers, items   # the forced answer of the question's second, with its time
      assert all(t.split(" s")[0].strip().isdigit() for t in answers)
      assert len(d.find_elements(By.CSS_SELECTOR, "#track .tick")) >= 6
      assert "Stream ended: 6 turns" in d.find_element(By.ID, "status").text
  finally:
    for d in drivers:
      d.quit()
