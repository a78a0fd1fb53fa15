"""A gate in front of a run's videos: a loopback http server of a folder's files that holds downloads back
until the test lets them through. A run whose videos come through it cannot end before the test opens it,
so whatever the test does meanwhile (a scrape, a node kill) lands mid-run by construction, not by timing.

The first `admit` distinct files asked for are served at once; a request for any other file waits until
`admit(n)` lets n more files through or `open()` lets every file through. A file once let through is
always served (a decode task retried after its node was lost downloads it again). HEAD, and GET of the
whole file or of one byte range, as fsspec's http file system asks. A run reading through the gate needs
a stall deadline longer than the hold (`VIDFEAT_DOWNLOAD_STALL_S`); `until` waits for what the test acts on,
failing if the run ended first.
"""
from __future__ import annotations

import http.server
import os
import re
import subprocess
import threading

from conftest import wait_for

HELD_S = "3600"               # VIDFEAT_DOWNLOAD_STALL_S for a run behind the gate: a bound, never reached


class Gate:
    """Serves `folder` on 127.0.0.1 from now on; as a context manager, opens and stops on leaving."""

    def __init__(self, folder: str, admit: int):
        self.folder, self.budget, self.everyone = folder, admit, False
        self.admitted: set[str] = set()          # files let through so far
        self.held = threading.Event()            # set once a request has had to wait
        self._changed = threading.Condition()
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_Handler,), {"gate": self}))
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def uri(self, name: str) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/{name}"

    def admit(self, n: int) -> None:
        """Let `n` more files through: the next ones asked for (or already waiting)."""
        with self._changed:
            self.budget += n
            self._changed.notify_all()

    def open(self) -> None:
        """Let every file through, now and from now on."""
        with self._changed:
            self.everyone = True
            self._changed.notify_all()

    def enter(self, name: str) -> None:
        """Return once `name` may be served."""
        with self._changed:
            while not self._may_pass(name):
                self.held.set()
                self._changed.wait()

    def _may_pass(self, name: str) -> bool:
        if self.everyone or name in self.admitted:
            return True
        if self.budget > 0:
            self.budget -= 1
            self.admitted.add(name)
            return True
        return False

    def __enter__(self) -> "Gate":
        return self

    def __exit__(self, *exc) -> None:
        self.open()                                  # requests still waiting end (their clients may be gone)
        self._httpd.shutdown()
        self._httpd.server_close()


def until(condition, run: subprocess.Popen, timeout: float = 300) -> None:
    """Wait until `condition()`, `run` (a process reading through the gate) still running: a run that ended
    fails with its output. `timeout` bounds the wait; it is not a timing check."""
    assert wait_for(lambda: run.poll() is not None or condition(), timeout=timeout), f"no progress in {timeout:.0f} s"
    if run.poll() is not None:
        out, err = run.communicate()
        raise AssertionError(f"the run ended (exit {run.returncode}) before that: {(err or out or '')[-3000:]}")


class _Handler(http.server.BaseHTTPRequestHandler):
    gate: Gate

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        name = self.path.lstrip("/")
        path = os.path.join(self.gate.folder, name)
        if "/" in name or not os.path.isfile(path):
            self.send_error(404)
            return
        self.gate.enter(name)
        try:
            self._send(open(path, "rb").read(), self.headers.get("Range"), body)
        except OSError:                              # the client is gone: its node was killed while it waited
            pass

    def _send(self, data: bytes, ranged: str | None, body: bool) -> None:
        start, end = _range(ranged, len(data))
        self.send_response(206 if ranged else 200)
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "bytes")
        if ranged:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.end_headers()
        if body:
            self.wfile.write(data[start:end])

    def log_message(self, *args) -> None:
        pass


def _range(header: str | None, size: int) -> tuple[int, int]:
    """[start, end) of a `bytes=a-b` / `bytes=a-` Range header (b inclusive); the whole file without one."""
    match = re.fullmatch(r"bytes=(\d+)-(\d*)", header or "")
    if not match:
        return 0, size
    return int(match.group(1)), min(size, int(match.group(2)) + 1 if match.group(2) else size)
