"""The worker supervisor tells its own worker from another process answering on the same port."""

from __future__ import annotations

import http.server
import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream.cli.supervise import wait_worker_ready


@pytest.fixture()
def foreign_health() -> Iterator[int]:
    """A /health on a free port that answers as some other process would (pid 1)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            body = json.dumps({"status": "ok", "pid": 1}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_address[1]
    srv.shutdown()


def test_a_worker_left_on_the_port_is_not_taken_for_the_new_one(foreign_health: int, tmp_path: Path) -> None:
    proc = subprocess.Popen(["sleep", "30"])
    try:
        with pytest.raises(RuntimeError, match="served by another process"):
            wait_worker_ready(proc, foreign_health, tmp_path / "w.log", timeout=10)
    finally:
        proc.kill()
        proc.wait()
