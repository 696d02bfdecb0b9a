"""A threaded HTTP server on 127.0.0.1 for the tests' OpenAI-compatible stubs."""

import http.server
import json
import threading


class JSONHandler(http.server.BaseHTTPRequestHandler):
  """A quiet request handler with the JSON body and reply helpers the stubs share."""

  def log_message(self, *args):  # keep test output quiet
    pass

  def read_json(self):
    """The request body, parsed as JSON."""
    return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

  def send_json(self, data: bytes, status: int = 200) -> None:
    """Replies `data` (the encoded JSON body) with `status`."""
    self.send_response(status)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(data)))
    self.end_headers()
    self.wfile.write(data)


class LoopbackServer:
  """Serves `handler_cls` (a BaseHTTPRequestHandler) on a free loopback port in a daemon thread;
  `base_url` is its chat-completions root (.../v1). `close()` stops it (as does leaving a
  `with` block on it)."""

  def start(self, handler_cls) -> None:
    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler_cls)
    self.httpd.daemon_threads = True
    self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
    self.thread.start()
    self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

  def close(self) -> None:
    self.httpd.shutdown()
    self.httpd.server_close()

  def __enter__(self):
    return self

  def __exit__(self, *exc) -> None:
    self.close()
